"""cdc-daemon: keeps Typesense collections in step with SQLite tables."""

__version__ = "0.1.0"
