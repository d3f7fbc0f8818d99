"""The one exception tree; library errors are translated into it at the boundaries."""

from __future__ import annotations


class CdcError(Exception):
    """Base of every error cdc-daemon raises on purpose. `retryable` says whether waiting helps."""

    retryable = False
    exit_code = 1


class ConfigError(CdcError):
    """The configuration is wrong: bad YAML, a bad key, a missing table. Exit code 2.

    Core code knows only the part of the config it was handed (as plain values): it names the
    key relative to that part (`key="fields.x"`, `see="rename"`). The root, which knows where
    that part sits, puts its path in front with `within("tables[3]")`. The text is
    `<key>: <message>` followed by ` (<see>)` when the message points at another key."""

    exit_code = 2

    def __init__(self, message: str, key: str | None = None, see: str | None = None) -> None:
        self.message = message
        self.key = key
        self.see = see
        text = f"{key}: {message}" if key else message
        super().__init__(f"{text} ({see})" if see else text)

    def within(self, path: str) -> ConfigError:
        """The same error with `path` in front of its key paths (raise it `from None`)."""
        see = _joined(path, self.see) if self.see else None
        return type(self)(self.message, _joined(path, self.key), see)


def _joined(path: str, key: str | None) -> str:
    """`tables[3]` + `fields.x` → `tables[3].fields.x`; an index joins without a dot."""
    if not key:
        return path
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


class DatabaseError(CdcError):
    """The SQLite file is missing, not a database, or cannot be read or written."""


class DatabaseBusy(DatabaseError):
    """The database stayed locked past busy_timeout; trying again later helps."""

    retryable = True


class TargetError(CdcError):
    """Typesense answered in a way that is not about one document (4xx on a whole request)."""


class TargetUnavailable(TargetError):
    """Typesense cannot be reached, timed out, or answered 5xx / not ready: wait and retry."""

    retryable = True


class TargetTimeout(TargetUnavailable):
    """A request timed out: Typesense may still apply it, later (docs/scaling-out.md)."""


class CollectionMissing(TargetUnavailable):
    """The collection is gone (deleted by hand?): it is created again before the next batch."""


class CollectionWaiting(CollectionMissing):
    """A shared collection another host manages (manage_collection: false) is missing or does
    not fit this table yet: wait for that host to create or migrate it."""


class AuthError(TargetError):
    """Typesense refused the API key (401/403). Retryable: the key may be rotated."""

    retryable = True


class GaveUp(CdcError):
    """A command that must end stopped waiting: `run --once` after ONCE_MAX_FAILURES failed
    tries (Typesense or the KMS unreachable, a refused key), `backfill` after `--wait` seconds
    for a shared collection another host manages. Exit code 1."""


class KmsUnavailable(CdcError):
    """The Typesense key could not be fetched from the KMS (unreachable, refused, a bad answer,
    an unreadable token file). Retryable: `run` keeps trying with backoff."""

    retryable = True


class SchemaMismatch(TargetError):
    """An existing collection does not match the schema derived from its table."""


class DocumentError(CdcError):
    """One row cannot become a document Typesense accepts. Counts toward max_attempts."""
