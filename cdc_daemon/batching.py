"""How many log entries the next batch reads: large while a backlog waits, small when caught up.

One import per batch costs Typesense a fixed overhead (a request, a write to its log, a lock):
with a backlog, large batches get close to what Typesense ingests in bulk. When caught up, a
batch holds what was committed since the last one whatever the limit, but a large limit lets a
burst become one long import that every later commit waits behind. So the size doubles after a
batch that came back full (more is waiting) and halves after one that was less than a quarter
full, between MIN_BATCH and the configured `sync.batch_size` (the upper bound) — and it never
grows past what keeps one batch's import under TARGET_SECONDS and its documents under
MAX_BATCH_BYTES (memory), halving when a batch went past either.
"""

from __future__ import annotations

MIN_BATCH = 100
FIRST_BATCH = 1000  # where a new daemon starts: a backlog reaches the bound in a few batches
TARGET_SECONDS = 1.0  # one batch (read, import, acknowledge)
MAX_BATCH_BYTES = 16 * 1024 * 1024  # one batch's import bodies (ASCII JSON, escapes counted)


class BatchSize:
    """The limit of the next batch's read. Used by the sync loop's thread only."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.floor = min(MIN_BATCH, ceiling)
        self.current = min(FIRST_BATCH, ceiling)
        self._within_budget = True  # the last batch sent kept to TARGET_SECONDS and the bytes

    def read(self, entries: int, limit: int) -> None:
        """A batch was read with `limit` and held `entries`: full, the next one (read while
        this one is sent) may be twice as large; a quarter full at most, half as large."""
        if entries >= limit and self._within_budget:
            self.current = min(self.ceiling, max(self.current, 2 * limit))
        elif entries < limit // 4:
            self.current = max(self.floor, min(self.current, limit // 2))

    def sent(self, seconds: float, document_bytes: int) -> None:
        """A batch was sent (read to acknowledgement) in `seconds`, with import bodies of
        `document_bytes`: past twice the budget, the next is half as large."""
        self._within_budget = seconds < TARGET_SECONDS and 2 * document_bytes <= MAX_BATCH_BYTES
        if seconds > 2 * TARGET_SECONDS or document_bytes > MAX_BATCH_BYTES:
            self.current = max(self.floor, self.current // 2)
