"""Site-pattern compression: identical alignment columns are computed once and weighted."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Patterns:
    """Unique columns of a ``[taxon, site, ...]`` array.

    Attributes:
        data: ``[taxon, pattern, ...]`` the unique columns, in order of first appearance.
        weights: ``float64[pattern]`` how many sites share each pattern.
        site_to_pattern: ``int64[site]`` the pattern of every original site.
    """

    data: np.ndarray
    weights: np.ndarray
    site_to_pattern: np.ndarray

    @property
    def pattern_count(self) -> int:
        return int(self.weights.shape[0])


def compress(tip_data: np.ndarray) -> Patterns:
    """Compress identical columns (sites) of ``tip_data[taxon, site, ...]``."""
    taxon_count, site_count = tip_data.shape[:2]
    columns = np.ascontiguousarray(np.moveaxis(tip_data, 1, 0)).reshape(site_count, -1)
    _, first, inverse, counts = np.unique(
        columns, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    # np.unique sorts; reorder patterns by first appearance so output is stable and readable.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    site_to_pattern = rank[inverse.reshape(-1)]
    data = tip_data[:, first[order]]
    return Patterns(
        data=data, weights=counts[order].astype(np.float64), site_to_pattern=site_to_pattern
    )
