"""``python -m llmscope.api.persister``: the persister without the HTTP API."""

import sys

from llmscope.api.persister.standalone import main

sys.exit(main())
