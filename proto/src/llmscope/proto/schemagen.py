"""Write (or ``--check``) the committed JSON Schema files under ``proto/schemas``.

Subscribers in other languages rely on these files; the check fails CI when a Struct changes
without its schema being regenerated (``make schemas``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from llmscope.proto.codec import EVENT_TYPES

SCHEMA_DIR = Path(__file__).resolve().parents[3] / "schemas"


def render(event_type: type[msgspec.Struct]) -> tuple[str, str]:
    """(file name, schema text) for one event type."""
    tag = event_type.__struct_config__.tag
    assert isinstance(tag, str)
    (ref,), components = msgspec.json.schema_components([event_type], ref_template="#/$defs/{name}")
    name = ref["$ref"].rsplit("/", 1)[-1]
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://llmscope.dev/schemas/{tag}.json",
        "title": tag,
        **components[name],
        "$defs": {k: v for k, v in components.items() if k != name},
    }
    return f"{tag}.json", json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed files differ")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR)
    args = parser.parse_args(argv)
    stale = []
    for event_type in EVENT_TYPES:
        fname, text = render(event_type)
        path = args.dir / fname
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            args.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("JSON Schemas out of date (run `make schemas`):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
