"""changelog.contiguous_ranges: acknowledged seqs → the fewest `BETWEEN` deletes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.hypothesis_examples import examples

from cdc_daemon.changelog import contiguous_ranges


@pytest.mark.parametrize(
    ("seqs", "expected"),
    [
        ([], []),
        ([5], [(5, 5)]),
        ([1, 2, 3, 7, 8], [(1, 3), (7, 8)]),
        ([8, 7, 3, 1, 2], [(1, 3), (7, 8)]),
        ([1, 3, 5], [(1, 1), (3, 3), (5, 5)]),
        ([10, 11, 12, 14, 15, 100], [(10, 12), (14, 15), (100, 100)]),
        ([2, 2, 3, 3, 3, 4], [(2, 4)]),
        ([4, 1, 1], [(1, 1), (4, 4)]),
        (iter([3, 2, 1]), [(1, 3)]),
        ([2**62, 2**62 + 1], [(2**62, 2**62 + 1)]),
    ],
)
def test_contiguous_ranges(seqs: list[int], expected: list[tuple[int, int]]) -> None:
    assert contiguous_ranges(seqs) == expected


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), max_size=150))
def test_property_ranges_cover_exactly_the_seqs_minimally(seqs: list[int]) -> None:
    ranges = contiguous_ranges(seqs)
    covered = [seq for low, high in ranges for seq in range(low, high + 1)]
    assert covered == sorted(set(seqs))  # exactly the seqs, each once, in order
    for low, high in ranges:
        assert low <= high
    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert low > high + 1  # neither overlapping nor adjacent: as few ranges as possible
