"""The node pool: the nodes in order of preference, each one's health and backoff, the /health
probes, and the one failover loop every request and every streamed export goes through."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

import cdc_daemon.typesense.answers as answers
from cdc_daemon import turns
from cdc_daemon.errors import TargetUnavailable
from cdc_daemon.retry import backoff_delay

NODE_BACKOFF_CAP = 15.0  # seconds; a recovered node gets traffic again within this
HUNG_BACKOFF_CAP = 300.0  # seconds; for a node whose writes hang (each try costs a timeout)
PROBE_TIMEOUT_CAP = 5.0  # seconds for a node's /health probe (at most typesense.timeout)
T = TypeVar("T")


class Node:
    """One node's health: failures in a row, and until when it is left alone (backoff).

    A node where a write hung or its connection broke after sending is healthy again only after
    a write succeeds there: answering reads (or `/health`) proves little when its writes hang
    (a follower cut off from the leader), and resetting its backoff on a read would cost a
    timeout on every batch. Not locked itself: NodePool changes it under its lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures = 0
        self.down_until = 0.0
        self.last_error = ""
        self.last_contact = 0.0  # monotonic time of the last answer or failure
        self.write_failed = False

    @property
    def up(self) -> bool:
        return self.failures == 0

    def due(self, now: float) -> bool:
        """Healthy, or its backoff is over (it gets a /health probe before real traffic)."""
        return self.failures == 0 or now >= self.down_until

    def mark_failed(self, error: str, write: bool = False, hung_initial: float = 10.0) -> None:
        """`write`: a write hung or broke there. Such a node is left alone much longer (from
        `hung_initial` seconds, doubling up to HUNG_BACKOFF_CAP): each try costs a timeout and
        a re-send of the batch."""
        self.last_contact = time.monotonic()
        self.failures += 1
        self.last_error = error
        self.write_failed = self.write_failed or write
        if self.write_failed:
            delay = backoff_delay(self.failures, initial=hung_initial, cap=HUNG_BACKOFF_CAP)
        else:
            delay = backoff_delay(self.failures, initial=0.5, cap=NODE_BACKOFF_CAP)
        self.down_until = time.monotonic() + delay

    def mark_ok(self, write: bool = False) -> None:
        self.last_contact = time.monotonic()
        if self.write_failed and not write:
            return
        self.failures = 0
        self.down_until = 0.0
        self.last_error = ""
        self.write_failed = False


class NodeFailed(Exception):
    """A node-level failure of one attempt: the failover loop moves on to the next node.
    `error` is what the caller sees when no node answers; `write_hung`: a write reached the
    node and hung or broke there (the node is then left alone much longer)."""

    def __init__(self, error: TargetUnavailable, write_hung: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.write_hung = write_hung


class NodePool:
    """The nodes in order of preference (no duplicates) and the failover loop.

    Each request goes to the first node that is healthy; a node that fails (NodeFailed) is
    marked down with backoff and the request moves on to the next node. A node whose backoff is
    over gets a cheap `/health` probe before real traffic, so a slow or dead node costs a probe,
    not a write. When every node is backing off, all are tried anyway (soonest first): the
    caller's own backoff paces that.

    Threads: the daemon loop, admin requests (worker threads: verify, repair, status) and
    metrics scrapes (`node_health`) use one pool at once. A lock guards the nodes' state and is
    never held during a request; two threads failing one node at once count two failures."""

    def __init__(self, urls: list[str], http: httpx.Client, timeout: float) -> None:
        self.nodes = [Node(url) for url in dict.fromkeys(urls)]  # order kept, no duplicates
        self._http = http
        self._timeout = timeout
        self._lock = threading.Lock()
        self.up = False  # did the last call reach a node that answered? (any thread's call)

    def node_health(self) -> dict[str, bool]:
        """Each node (preference order) → False while its last request or probe failed."""
        with self._lock:
            return {node.url: node.up for node in self.nodes}

    def failover(self, attempt: Callable[[Node], T], write: bool) -> T:
        """`attempt` on the first node fit for it, then the next one while it raises NodeFailed;
        TargetUnavailable (the last node's failure) when none answered. Other errors (a refused
        key, a refused request) end the loop: another node would say the same."""
        last: TargetUnavailable | None = None
        for node, probe in self._candidates():
            problem = self._probe(node) if probe else None
            if problem is not None:
                last = TargetUnavailable(problem)
                continue
            try:
                result = attempt(node)
            except NodeFailed as failed:
                self.mark_failed(node, str(failed.error), failed.write_hung)
                last = failed.error
                continue
            with self._lock:
                node.mark_ok(write=write)
            self.up = True
            return result
        self.up = False
        raise last or TargetUnavailable("no Typesense node configured")

    def mark_failed(self, node: Node, error: str, write_hung: bool = False) -> None:
        # A write that reached the node and hung or broke: /health proves little there.
        with self._lock:
            node.mark_failed(error, write=write_hung, hung_initial=max(10.0, 2 * self._timeout))

    def probe_idle_nodes(self, max_age: float = 30.0) -> None:
        """Between batches: a `/health` probe for each healthy node nobody asked for `max_age`
        seconds (a standby node that died is known before it is needed) and for each failed
        node whose backoff is over. A failed *standby* node (one after a healthy node in the
        order, so it gets no traffic) or one that was refused or not ready counts as recovered
        when its probe passes; a preferred node whose writes hung only when a write passes
        (`/health` can be ok on a node whose writes hang)."""
        now = time.monotonic()
        standby = False
        for node in self.nodes:
            with self._lock:
                was_up = node.up
                wanted = node.due(now) and (not was_up or now - node.last_contact >= max_age)
            if wanted and self._probe(node) is None:
                with self._lock:
                    node.mark_ok(write=was_up or standby)
            standby = standby or node.up

    def _candidates(self) -> list[tuple[Node, bool]]:
        """Nodes to try, in order, each with whether it needs a probe first."""
        now = time.monotonic()
        with self._lock:
            due = [(n, not n.up) for n in self.nodes if n.due(now)]
            if due:
                return due
            return [(n, False) for n in sorted(self.nodes, key=lambda n: n.down_until)]

    def _probe(self, node: Node) -> str | None:
        """GET /health with a short timeout: is a node that failed before worth a request?
        None when it is; else the problem, and the node is marked failed."""
        try:
            with turns.waiting():  # a fleet's other workers go on meanwhile
                response = self._http.get(
                    node.url + "/health", timeout=min(self._timeout, PROBE_TIMEOUT_CAP)
                )
        except httpx.HTTPError as exc:
            problem = f"{node.url}: /health: {type(exc).__name__}"
        else:
            if answers.health_ok(response):
                return None
            problem = f"{node.url}: /health: HTTP {response.status_code} {response.text[:100]}"
        with self._lock:
            node.mark_failed(problem)
        return problem
