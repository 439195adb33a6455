"""Row ranges: sorted, disjoint `[start, stop)` intervals of step-table rows (the store's holes, the rows it keeps)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

Ranges = list[list[int]]


def kept_ranges(n: int, holes: Ranges) -> list[tuple[int, int]]:
    """The row ranges of [0, n) outside the (sorted, disjoint) holes."""
    out, at = [], 0
    for a, b in holes:
        if a > at:
            out.append((at, min(a, n)))
        at = max(at, b)
    if at < n:
        out.append((at, n))
    return [(a, b) for a, b in out if b > a]


def blocks(ranges: Iterable[tuple[int, int]], size: int = 4096) -> Iterator[tuple[int, int]]:
    """The ranges cut into pieces of at most `size` rows (one read each)."""
    for a, b in ranges:
        for start in range(a, b, size):
            yield start, min(b, start + size)


def merge_ranges(ranges: Iterable[tuple[int, int] | list[int]]) -> Ranges:
    """Sorted, disjoint ranges covering the same rows (overlapping or touching ones joined)."""
    out: Ranges = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def count_rows(ranges: Ranges) -> int:
    return sum(b - a for a, b in ranges)


def in_ranges(rows: np.ndarray, ranges: Ranges) -> np.ndarray:
    """Per row, True where it lies inside one of the (sorted, disjoint) ranges."""
    if not ranges:
        return np.zeros(len(rows), dtype=bool)
    ends = np.asarray([b for _, b in ranges])
    k = range_index(rows, ranges)
    return (k >= 0) & (rows < ends[np.maximum(k, 0)])


def range_index(rows: np.ndarray, ranges: Ranges) -> np.ndarray:
    """Index of the range starting at or before each row (only meaningful for rows inside a range)."""
    return np.searchsorted(np.asarray([a for a, _ in ranges]), rows, side="right") - 1


def runs(idx: np.ndarray) -> Ranges:
    """Consecutive integers in sorted `idx` as [start, stop) ranges."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    return [[int(a), int(b)] for a, b in zip(starts, stops, strict=True)]
