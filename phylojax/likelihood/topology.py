"""Tree topology as flat integer arrays for the pruning kernels (coraxlib-style operations).

The likelihood kernels work on a rooted *binary* tree: multifurcations (including the
trifurcating root of an unrooted tree) are resolved with zero-length branches, which leaves the
likelihood unchanged. Operations ``[parent, child1, child2]`` are listed in postorder and, because
nodes are numbered leaves first then internal nodes in postorder, ``parent == leaf_count + i`` for
operation ``i``. Passing ``operations`` as a traced array means any tree with the same number of
taxa reuses one compiled function.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..tree import Tree


@dataclasses.dataclass(frozen=True, eq=False)
class Topology:
    """Arrays of a rooted binary tree.

    Attributes:
        operations: ``int32[leaf_count - 1, 3]`` ``[parent, child1, child2]`` in postorder.
        parents: ``int32[node_count]`` (``-1`` at the root).
        levels: ``int32[level_count, width]`` operation indices grouped by height (independent
            within a level), padded with ``-1``; used by the level-batched schedule.
        tree: the binary tree the arrays describe.
        source_nodes: ``int64[node_count]`` node of the *input* tree each binary node stands for
            (``-1`` for the zero-length nodes added to resolve multifurcations).
    """

    operations: np.ndarray
    parents: np.ndarray
    levels: np.ndarray
    tree: Tree
    source_nodes: np.ndarray

    @property
    def leaf_count(self) -> int:
        return self.tree.leaf_count

    @property
    def node_count(self) -> int:
        return self.tree.node_count


def _clade_keys(tree: Tree) -> list[frozenset]:
    keys: list[frozenset] = [frozenset()] * tree.node_count
    kids = tree.children
    for v in range(tree.node_count):
        keys[v] = frozenset([v]) if v < tree.leaf_count else frozenset().union(
            *(keys[c] for c in kids[v])
        )
    return keys


def build_topology(tree: Tree) -> Topology:
    """Resolve ``tree`` to a rooted binary tree and emit its operation and level arrays."""
    binary = tree.resolve_binary() if not tree.is_binary() else tree
    kids = binary.children
    n = binary.leaf_count
    ops = np.array([[v, *kids[v]] for v in range(n, binary.node_count)], dtype=np.int32)
    heights = binary.heights()
    op_heights = heights[n:]
    level_count = int(op_heights.max()) if len(op_heights) else 0
    groups = [np.flatnonzero(op_heights == h) for h in range(1, level_count + 1)]
    width = max((len(g) for g in groups), default=0)
    levels = np.full((level_count, width), -1, dtype=np.int32)
    for i, g in enumerate(groups):
        levels[i, : len(g)] = g
    original = {k: v for v, k in enumerate(_clade_keys(tree))}
    source = np.array([original.get(k, -1) for k in _clade_keys(binary)], dtype=np.int64)
    return Topology(
        operations=ops,
        parents=binary.parents.astype(np.int32),
        levels=levels,
        tree=binary,
        source_nodes=source,
    )
