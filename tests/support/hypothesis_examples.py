"""How many examples a property test (hypothesis) tries: `@settings(max_examples=examples(600))`.

The full suite (CI, or any run not selecting `-m "not typesense"`) tries the number the test
names. The fast subset (`pytest -m "not typesense"`) tries a fifth of it, at least 20 (never
more than the test names): tests/conftest.py's `pytest_configure` calls `use_fast_subset` before
any test module is imported, in every pytest-xdist worker alike."""

from __future__ import annotations

FAST_SHARE = 5  # the fast subset tries 1/FAST_SHARE of a test's examples
FAST_FLOOR = 20

_fast = False


def use_fast_subset(fast: bool) -> None:
    global _fast
    _fast = fast


def examples(full: int) -> int:
    """`full` in the full suite; in the fast subset, a fifth of it, at least 20 (at most full)."""
    return min(full, max(FAST_FLOOR, full // FAST_SHARE)) if _fast else full
