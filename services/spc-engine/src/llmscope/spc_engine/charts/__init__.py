"""Control charts: small stateful objects with ``update`` and a msgspec state that round-trips."""
