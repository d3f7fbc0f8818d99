"""Collections and aliases: their API, and the short-lived cache of alias lookups that
addresses writes to the real collection behind an alias."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import quote

import cdc_daemon.typesense.answers as answers
from cdc_daemon.errors import CollectionMissing, TargetError
from cdc_daemon.typesense.client import Client

ALIAS_TTL = 1.0  # seconds a write may use an alias lookup (one GET per batch was ~10% of one)


class AliasCache:
    """Alias name → (the collection it points to or None, when that was looked up). Locked:
    the daemon loop and admin worker threads (verify repairs) read and fill it at once."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()
        self.ttl = ALIAS_TTL  # longer when no one else switches these aliases (fleet.py)

    def recent(self, name: str) -> tuple[str | None] | None:
        """(collection or None) when looked up less than `ttl` ago, else None."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None or time.monotonic() - entry[1] >= self.ttl:
            return None
        return (entry[0],)

    def put(self, name: str, collection: str | None) -> None:
        with self._lock:
            self._entries[name] = (collection, time.monotonic())

    def drop(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class CollectionsApi:
    """Typesense's collections and aliases API (evolution.CollectionManager decides what they
    should be). Any thread (the loop, admin requests); the alias cache is locked, the rest is
    one request each."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.aliases = AliasCache()

    def get_collection(self, name: str) -> dict[str, Any] | None:
        """A collection's schema (its fields checked: answers.collection_answer); None when
        there is no such collection."""
        path = f"/collections/{quote(name, safe='')}"
        answer = self._client.json_object("GET", path, ok=(200, 404))
        return None if answer is None else answers.collection_answer(answer, f"GET {path}")

    def create_collection(self, schema: dict[str, Any]) -> bool:
        """False when a collection of that name exists already (another host created it at the
        same time, or an earlier create timed out but was applied)."""
        response = self._client.request("POST", "/collections", content=json.dumps(schema))
        if response.status_code == 409:
            return False
        if response.status_code not in (200, 201):
            raise answers.http_error("POST /collections", response)
        return True

    def add_fields(self, collection: str, fields: list[dict[str, Any]]) -> str | None:
        """Add fields in place (PATCH); None when done, else Typesense's reason for refusing."""
        path = f"/collections/{quote(collection, safe='')}"
        response = self._client.request("PATCH", path, content=json.dumps({"fields": fields}))
        if response.status_code == 200:
            return None
        # A PATCH that timed out may have been applied: then the retry is refused ("... is
        # already part of the schema"), and the fields are there.
        existing = self.get_collection(collection) or {"fields": []}
        present = {f["name"] for f in existing["fields"]}
        if all(f["name"] in present for f in fields):
            return None
        return answers.message(response)

    def delete_collection(self, physical_name: str) -> None:
        """Drop a collection by its real name. Refuses an alias name (Typesense would drop the
        collection behind the alias instead) and a collection any alias points to (searches use
        it: a crash after an alias switch must never cost the live collection)."""
        if self.get_alias(physical_name) is not None:
            raise TargetError(f"refusing to delete {physical_name!r}: it is an alias")
        users = self.aliases_to(physical_name)
        if users:
            raise TargetError(
                f"refusing to delete {physical_name!r}: alias {users[0]!r} points to it"
            )
        self.aliases.clear()
        self._client.call("DELETE", f"/collections/{quote(physical_name, safe='')}", (200, 404))

    def aliases_to(self, physical_name: str) -> list[str]:
        """The aliases that point to a collection."""
        answer = self._client.json_object("GET", "/aliases") or {"aliases": []}
        return [
            str(alias.get("name"))
            for alias in answers.object_list(answer, "aliases", "GET /aliases")
            if alias.get("collection_name") == physical_name
        ]

    def get_alias(self, name: str) -> str | None:
        """The collection an alias points to, or None when there is no such alias."""
        path = f"/aliases/{quote(name, safe='')}"
        answer = self._client.json_object("GET", path, ok=(200, 404))
        collection = None
        if answer is not None:
            collection = answers.text_field(answer, "collection_name", f"GET {path}")
        self.aliases.put(name, collection)
        return collection

    def set_alias(self, name: str, collection: str) -> None:
        """Point an alias at a collection; one atomic switch for searches. Writes use the new
        target at once, without looking it up again."""
        self.aliases.drop(name)
        content = json.dumps({"collection_name": collection})
        self._client.call("PUT", f"/aliases/{quote(name, safe='')}", content=content)
        self.aliases.put(name, collection)

    def delete_alias(self, name: str) -> None:
        """Remove an alias (the collection behind it stays); one that is gone is fine."""
        self.aliases.clear()
        self._client.call("DELETE", f"/aliases/{quote(name, safe='')}", (200, 404))

    def physical(self, collection: str) -> str:
        """The real collection behind an alias. Writes are addressed to it, never to the alias:
        Typesense 0.24.1 loses writes addressed to an alias when it restarts before its next
        snapshot (it replays its log without resolving the alias).

        A lookup is reused for ALIAS_TTL seconds. Every get_alias() and set_alias() refreshes it,
        and delete_collection() and a missing collection drop it, so the daemon's own alias switches
        (and a following host's look at a shared collection) take effect at once; only a switch
        made by someone else can be missed, for at most ALIAS_TTL."""
        cached = self.aliases.recent(collection)
        target = cached[0] if cached is not None else self.get_alias(collection)
        return target or self._no_alias(collection)

    def _no_alias(self, name: str) -> str:
        """The collection a write goes to when the node asked knows no alias `name`: GET
        /collections/<name> resolves an alias too, so a follower that has not applied a new
        alias yet answers 404 here (retried later) instead of the write being addressed to the
        alias name, which a node catching up by replaying its log would lose."""
        found = self.get_collection(name)
        if found is None:
            raise CollectionMissing(f"collection {name!r} not found (yet) on the node asked")
        return str(found.get("name") or name)
