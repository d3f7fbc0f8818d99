"""The Typesense side, over HTTP (httpx), cut along its seams; the core sees only the Sink
protocol of sink.py. Modules, bottom up:

- answers.py: every Typesense answer (httpx errors, statuses, bodies) → errors.py's errors;
- nodes.py: the node pool, node health and backoff, probes, the one failover loop;
- client.py: the request layer (failover, key refresh on 401, streamed lines);
- collections.py: CollectionsApi (collections, aliases, the alias cache); documents.py: the
  documents API;
- cluster.py: TypesenseSink, all of it behind one object (what wiring builds).
"""

from cdc_daemon.typesense.cluster import TypesenseSink

__all__ = ["TypesenseSink"]
