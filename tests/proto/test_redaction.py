"""The shared rule of what of a target is never printed (``llmscope.proto.redaction``): the rule
itself is tested on the dashboard's table (tests/web/test_userinfo.py); here, that it holds no key
of its own, so a service without the API's installation key prints ``•••`` alone."""

from __future__ import annotations

import hashlib
import hmac

from llmscope.proto.redaction import HIDDEN, has_fingerprints, hidden, redacted, without_fingerprints
from llmscope.web.userinfo import release_fingerprint_key, use_fingerprint_key, without_password

TARGET = "https://bot:pw@gw.example/v1?api-key=k1&x=1"


def test_the_rule_prints_no_fingerprint_without_a_key_given_even_beside_the_dashboards() -> None:
    key = bytes(range(32))
    use_fingerprint_key(key)  # the dashboard's, in this process
    try:
        assert redacted(TARGET) == "https://bot:•••@gw.example/v1?api-key=•••&x=1"
        assert not has_fingerprints(redacted(TARGET))
        keyed = redacted(TARGET, key)
        assert keyed == without_password(TARGET)
        mac = {s: hmac.new(key, s.encode(), hashlib.sha256).hexdigest()[:4] for s in ("pw", "k1")}
        assert keyed == f"https://bot:{HIDDEN}{mac['pw']}@gw.example/v1?api-key={HIDDEN}{mac['k1']}&x=1"
        assert without_fingerprints(keyed) == redacted(TARGET)
        assert hidden(keyed.split("api-key=")[1][:7]) == HIDDEN + mac["k1"]  # printed: as it is
    finally:
        release_fingerprint_key(key)
