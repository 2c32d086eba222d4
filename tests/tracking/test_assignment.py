"""The exact assignment: least total cost, where a greedy pick would not give it."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from emotion.tracking import assign


def test_it_beats_the_greedy_pick() -> None:
    # Greedy takes (0, 0) at cost 1, then must pay 10 for (1, 1); the best pays 2 + 2.
    assert assign([[1.0, 2.0], [2.0, 10.0]]) == [(0, 1), (1, 0)]


def test_infinite_costs_are_left_unmatched() -> None:
    assert assign([[math.inf, 0.5], [math.inf, math.inf]]) == [(0, 1)]
    assert assign([[math.inf]]) == []


def test_empty_and_rectangular() -> None:
    assert assign([]) == []
    assert assign([[], []]) == []
    assert assign([[0.9], [0.1], [0.5]]) == [(1, 0)]
    assert assign([[0.9, 0.1, 0.5]]) == [(0, 1)]


@given(
    st.integers(1, 4).flatmap(
        lambda rows: st.integers(1, 4).flatmap(
            lambda columns: st.lists(
                st.lists(st.floats(0, 1), min_size=columns, max_size=columns),
                min_size=rows,
                max_size=rows,
            )
        )
    )
)
def test_it_is_the_least_total_of_every_matching(cost: list[list[float]]) -> None:
    rows, columns = len(cost), len(cost[0])
    pairs = assign(cost)
    assert len(pairs) == min(rows, columns)
    assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
    if rows <= columns:
        best = min(
            sum(cost[r][c] for r, c in enumerate(perm))
            for perm in itertools.permutations(range(columns), rows)
        )
    else:
        best = min(
            sum(cost[r][c] for c, r in enumerate(perm))
            for perm in itertools.permutations(range(rows), columns)
        )
    assert math.isclose(sum(cost[r][c] for r, c in pairs), best, abs_tol=1e-9)
