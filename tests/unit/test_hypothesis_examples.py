"""Property tests try every example they name except in the fast subset (`-m "not typesense"`),
which tries a fifth: the full suite (CI) keeps its strength (support.hypothesis_examples)."""

from __future__ import annotations

import pytest
from support.hypothesis_examples import examples


def test_only_the_fast_subset_tries_fewer_examples(request: pytest.FixtureRequest) -> None:
    fast = " ".join(str(request.config.getoption("markexpr")).split()) == "not typesense"
    assert examples(600) == (120 if fast else 600)
    assert examples(60) == (20 if fast else 60)
    assert examples(12) == 12
