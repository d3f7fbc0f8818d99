"""The owner registry's entries are documents anyone with the key can write: an odd
`claimed_at` makes the claim count as stale-aged (infinitely old), never crashes the loop."""

from __future__ import annotations

import pytest
from support.fake_sink import FakeSink

from cdc_daemon.ownership import REGISTRY, Ownership


@pytest.mark.parametrize(
    ("claimed_at", "age"),
    [(10**400, float("inf")), ("soon", float("inf")), ([1], float("inf")), (None, 1000.0)],
)
def test_an_odd_claimed_at_is_an_age_not_a_crash(claimed_at: object, age: float) -> None:
    ownership = Ownership(FakeSink(), REGISTRY, "host:/db", clock=lambda: 1000.0)
    assert ownership._age({"claimed_at": claimed_at}) == age
