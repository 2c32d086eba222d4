"""The best one-to-one matching of tracks to detections, exactly, without scipy.

A frame holds a handful of faces, so the O(n^2 m) Hungarian method costs
microseconds; an exact answer matters where faces cross and a greedy pick
of the single best overlap can give both ids to the wrong people.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def assign(cost: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """(row, column) pairs of least total cost, one per row or column, whichever are fewer.

    ``cost`` is rows by columns, every row the same length; an infinite cost
    is never chosen where a finite one can be, and pairs of infinite cost are
    left out of the answer.
    """
    rows = len(cost)
    columns = len(cost[0]) if rows else 0
    if not rows or not columns:
        return []
    transposed = rows > columns
    matrix = [list(row) for row in cost]
    if transposed:
        matrix = [list(column) for column in zip(*matrix, strict=True)]
        rows, columns = columns, rows
    # Infinite costs become one large finite one, so the potentials stay finite.
    finite = [value for row in matrix for value in row if math.isfinite(value)]
    big = (max(map(abs, finite), default=1.0) + 1.0) * (rows + columns + 1)
    matrix = [[value if math.isfinite(value) else big for value in row] for row in matrix]
    pairs = [(row, column) for row, column in _hungarian(matrix, rows, columns)]
    chosen = [(r, c) for r, c in pairs if matrix[r][c] < big]
    if transposed:
        chosen = [(c, r) for r, c in chosen]
    return sorted(chosen)


def _hungarian(matrix: list[list[float]], rows: int, columns: int) -> list[tuple[int, int]]:
    """Shortest augmenting paths with potentials (rows <= columns), 1-based inside."""
    u = [0.0] * (rows + 1)
    v = [0.0] * (columns + 1)
    owner = [0] * (columns + 1)  # owner[j]: the row matched to column j, 0 for none
    way = [0] * (columns + 1)
    for row in range(1, rows + 1):
        owner[0] = row
        j0 = 0
        least = [math.inf] * (columns + 1)
        used = [False] * (columns + 1)
        while True:
            used[j0] = True
            i0 = owner[j0]
            delta = math.inf
            j1 = 0
            for j in range(1, columns + 1):
                if used[j]:
                    continue
                reduced = matrix[i0 - 1][j - 1] - u[i0] - v[j]
                if reduced < least[j]:
                    least[j] = reduced
                    way[j] = j0
                if least[j] < delta:
                    delta = least[j]
                    j1 = j
            for j in range(columns + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    least[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return [(owner[j] - 1, j - 1) for j in range(1, columns + 1) if owner[j]]
