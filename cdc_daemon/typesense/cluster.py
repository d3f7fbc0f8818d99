"""TypesenseSink: the Sink (sink.py) over a Typesense server or cluster, put together from the
node pool (nodes.py), the request layer (client.py), collections and documents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx

from cdc_daemon.sink import DocResult, DocumentBatch
from cdc_daemon.typesense.client import HEADERS, Client
from cdc_daemon.typesense.collections import CollectionsApi
from cdc_daemon.typesense.documents import Documents
from cdc_daemon.typesense.nodes import NodePool
from cdc_daemon.typesense.plain_http import PlainHttp


class TypesenseSink:
    """A Typesense server or cluster. `api_key` is called for every request (keys rotate);
    `on_auth_error` is called with a key Typesense refused (kms.py fetches a new one).

    Cluster client: `nodes` in order of preference (`nearest_node`, when given, first); each
    request fails over to the next node (NodePool). Writes whose outcome is unknown are counted
    in `uncertain_writes` (Client).

    Threads: one instance serves the daemon loop (every call), admin requests on worker threads
    (verify and repair: reads of aliases, collections and documents, exports, deletes, and
    through deletes `server_version`; status: `up`) and metrics scrapes (`node_health`) at once:
    node state, the uncertain count and the alias cache are locked, the cached server version
    is safe unlocked (Client.server_version); `up` is whatever the last call of any thread
    found. `probe_idle_nodes` and `close` are the loop's."""

    def __init__(
        self,
        nodes: list[str],
        api_key: Callable[[], str],
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        nearest_node: str | None = None,
        on_auth_error: Callable[[str], None] | None = None,
        plain: bool | None = None,
        beat: Callable[[], None] | None = None,
    ) -> None:
        """Requests to `http://` nodes go through plain_http.py when `plain` (by default: unless
        a `transport` is given, as tests do to see every request); the rest (HTTPS, exports,
        /health probes) through httpx and its `transport`. `beat` (the watchdog's, for `run`;
        heartbeat.py) is beaten by plain_http.py as HeartbeatTransport does for httpx."""
        connect_timeout = min(5.0, timeout)
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
            headers=dict(HEADERS),
        )
        self._plain = None
        if plain or (plain is None and transport is None):
            self._plain = PlainHttp(timeout, connect_timeout, beat)
        self.pool = NodePool(([nearest_node] if nearest_node else []) + nodes, self._http, timeout)
        self.client = Client(self.pool, self._http, api_key, on_auth_error, self._plain)
        self.collections_api = CollectionsApi(self.client)
        self.documents = Documents(self.client, self.collections_api)

    def close(self) -> None:
        self._http.close()
        if self._plain is not None:
            self._plain.close()

    # -- the cluster -------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Did the last call reach a node that answered?"""
        return self.pool.up

    @property
    def uncertain_writes(self) -> int:
        return self.client.uncertain_writes

    def node_health(self) -> dict[str, bool]:
        return self.pool.node_health()

    def probe_idle_nodes(self, max_age: float = 30.0) -> None:
        self.pool.probe_idle_nodes(max_age)

    def server_version(self) -> tuple[int, ...]:
        return self.client.server_version()

    def health(self) -> list[str]:
        return self.client.health()

    # -- collections and aliases -------------------------------------------------------------

    def get_collection(self, name: str) -> dict[str, Any] | None:
        return self.collections_api.get_collection(name)

    def create_collection(self, schema: dict[str, Any]) -> bool:
        return self.collections_api.create_collection(schema)

    def add_fields(self, collection: str, fields: list[dict[str, Any]]) -> str | None:
        return self.collections_api.add_fields(collection, fields)

    def delete_collection(self, physical_name: str) -> None:
        self.collections_api.delete_collection(physical_name)

    def aliases_to(self, physical_name: str) -> list[str]:
        return self.collections_api.aliases_to(physical_name)

    def get_alias(self, name: str) -> str | None:
        return self.collections_api.get_alias(name)

    def set_alias(self, name: str, collection: str) -> None:
        self.collections_api.set_alias(name, collection)

    def delete_alias(self, name: str) -> None:
        self.collections_api.delete_alias(name)

    # -- documents ---------------------------------------------------------------------------

    def upsert(
        self, collection: str, documents: DocumentBatch, dirty_values: str = "reject"
    ) -> list[DocResult]:
        return self.documents.upsert(collection, documents, dirty_values)

    def delete(self, collection: str, ids: list[str]) -> list[DocResult]:
        return self.documents.delete(collection, ids)

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return self.documents.get_document(collection, doc_id)

    def write_document(
        self, collection: str, document: dict[str, Any], replace: bool = False
    ) -> bool:
        return self.documents.write_document(collection, document, replace)

    def delete_document(self, collection: str, doc_id: str) -> None:
        self.documents.delete_document(collection, doc_id)

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        return self.documents.export(collection)
