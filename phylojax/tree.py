"""Rooted trees as flat numpy arrays (the "records -> arrays" layer).

Nodes are numbered leaves first (``0 .. leaf_count-1`` in the order of the Newick string, or of an
alignment after :meth:`Tree.reorder_leaves`), then internal nodes in postorder, so the root is the
last node. Every non-root node owns the branch to its parent: ``branch_lengths[node]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .errors import input_error


@dataclasses.dataclass(frozen=True, eq=False)
class Tree:
    """An immutable tree: parent array, branch lengths and per-node names/labels.

    Attributes:
        parents: ``int64[node_count]``, ``-1`` at the root.
        branch_lengths: ``float64[node_count]``, the branch above each node; ``nan`` where the
            Newick gave none, ``0`` at the root.
        names: node names (leaf names; internal names where given, else ``None``).
        labels: ``{label}`` branch tags (HyPhy style), ``None`` where absent.
        supports: numeric internal labels (bootstrap values), which are not names.
        source: file the tree came from, for error messages.
    """

    parents: np.ndarray
    branch_lengths: np.ndarray
    names: tuple[str | None, ...]
    labels: tuple[str | None, ...]
    supports: tuple[float | None, ...]
    leaf_count: int
    source: str = "<tree>"

    def __post_init__(self):
        n = len(self.parents)
        if not (len(self.branch_lengths) == len(self.names) == len(self.labels) == n):
            raise ValueError("Tree arrays disagree in length")
        if n and self.parents[-1] != -1:
            raise ValueError("the root must be the last node")

    # ------------------------------------------------------------------ derived structure
    @property
    def node_count(self) -> int:
        return len(self.parents)

    @property
    def root(self) -> int:
        return self.node_count - 1

    @property
    def leaf_names(self) -> list[str]:
        return [str(n) for n in self.names[: self.leaf_count]]

    @property
    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in range(self.node_count)]
        for node, parent in enumerate(self.parents):
            if parent >= 0:
                kids[parent].append(node)
        return kids

    @property
    def has_lengths(self) -> bool:
        return bool(np.all(np.isfinite(self.branch_lengths[:-1])))

    def is_binary(self) -> bool:
        return all(len(c) == 2 for c in self.children[self.leaf_count :])

    def postorder(self) -> np.ndarray:
        """Nodes in postorder (children before parents); by construction this is ``arange``."""
        return np.arange(self.node_count)

    def depths(self) -> np.ndarray:
        """Number of edges from the root to each node."""
        depth = np.zeros(self.node_count, dtype=np.int64)
        for node in range(self.node_count - 2, -1, -1):
            depth[node] = depth[self.parents[node]] + 1
        return depth

    def heights(self) -> np.ndarray:
        """Edges on the longest path down to a leaf (leaves 0): the pruning level of a node."""
        height = np.zeros(self.node_count, dtype=np.int64)
        for node in range(self.node_count - 1):
            p = self.parents[node]
            height[p] = max(height[p], height[node] + 1)
        return height

    def subtree_mask(self, node: int) -> np.ndarray:
        """Boolean mask of the nodes in the subtree rooted at ``node`` (itself included)."""
        mask = np.zeros(self.node_count, dtype=bool)
        mask[node] = True
        for v in range(node - 1, -1, -1):  # descendants have smaller postorder numbers
            p = self.parents[v]
            if p >= 0 and mask[p]:
                mask[v] = True
        return mask

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_children(
        cls,
        children: Sequence[Sequence[int]],
        root: int,
        *,
        names: Sequence[str | None],
        branch_lengths: Sequence[float],
        labels: Sequence[str | None] | None = None,
        supports: Sequence[float | None] | None = None,
        source: str = "<tree>",
    ) -> Tree:
        """Build from any numbering: leaves first (in increasing old id), then internal nodes in
        postorder."""
        labels = labels if labels is not None else [None] * len(names)
        supports = supports if supports is not None else [None] * len(names)
        leaves: list[int] = []
        internal_post: list[int] = []
        stack: list[tuple[int, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            if not children[node]:
                leaves.append(node)
            elif done:
                internal_post.append(node)
            else:
                stack.append((node, True))
                for child in reversed(children[node]):
                    stack.append((child, False))
        leaves.sort()  # keep the caller's leaf order (Newick order when ids are preorder)
        order = leaves + internal_post
        new_id = {old: new for new, old in enumerate(order)}
        parents = np.full(len(order), -1, dtype=np.int64)
        for old in order:
            for child in children[old]:
                parents[new_id[child]] = new_id[old]
        lengths = np.array([branch_lengths[o] for o in order], dtype=np.float64)
        lengths[-1] = 0.0
        return cls(
            parents=parents,
            branch_lengths=lengths,
            names=tuple(names[o] for o in order),
            labels=tuple(labels[o] for o in order),
            supports=tuple(supports[o] for o in order),
            leaf_count=len(leaves),
            source=source,
        )

    def _rebuild(self, children, root, names, lengths, labels, supports) -> Tree:
        return Tree.from_children(
            children,
            root,
            names=names,
            branch_lengths=lengths,
            labels=labels,
            supports=supports,
            source=self.source,
        )

    def _lists(self):
        return (
            self.children,
            list(self.names),
            list(self.branch_lengths),
            list(self.labels),
            list(self.supports),
        )

    # ------------------------------------------------------------------ transformations
    def with_branch_lengths(self, branch_lengths) -> Tree:
        lengths = np.asarray(branch_lengths, dtype=np.float64).copy()
        lengths[-1] = 0.0
        return dataclasses.replace(self, branch_lengths=lengths)

    def reorder_leaves(self, taxon_names: Sequence[str], *, what: str = "alignment") -> Tree:
        """Renumber so that leaf ``i`` is ``taxon_names[i]``; name every mismatch otherwise."""
        mine = self.leaf_names
        missing_in_aln = sorted(set(mine) - set(taxon_names))
        missing_in_tree = sorted(set(taxon_names) - set(mine))
        if missing_in_aln or missing_in_tree:
            parts = []
            if missing_in_aln:
                parts.append(f"in the tree but not the {what}: {', '.join(missing_in_aln)}")
            if missing_in_tree:
                parts.append(f"in the {what} but not the tree: {', '.join(missing_in_tree)}")
            raise input_error("taxa differ — " + "; ".join(parts), file=self.source)
        position = {name: i for i, name in enumerate(taxon_names)}
        perm = np.empty(self.node_count, dtype=np.int64)  # old -> new
        for old in range(self.leaf_count):
            perm[old] = position[mine[old]]
        perm[self.leaf_count :] = np.arange(self.leaf_count, self.node_count)
        inverse = np.argsort(perm)
        parents = np.where(self.parents[inverse] >= 0, perm[self.parents[inverse]], -1)
        return dataclasses.replace(
            self,
            parents=parents.astype(np.int64),
            branch_lengths=self.branch_lengths[inverse],
            names=tuple(self.names[i] for i in inverse),
            labels=tuple(self.labels[i] for i in inverse),
            supports=tuple(self.supports[i] for i in inverse),
        )

    def unroot(self) -> Tree:
        """Merge the two branches of a bifurcating root into one (HyPhy's and IQ-TREE's convention)."""
        kids, names, lengths, labels, supports = self._lists()
        root = self.root
        if len(kids[root]) != 2:
            return self
        a, b = kids[root]
        # Keep the internal child as the new root (a leaf cannot be a root of an unrooted tree).
        keep, other = (a, b) if kids[a] else (b, a)
        if not kids[keep]:
            return self  # two-leaf tree: nothing to merge
        length = np.nansum([lengths[a], lengths[b]]) if np.isfinite(lengths[a]) or np.isfinite(
            lengths[b]
        ) else np.nan
        kids[keep] = kids[keep] + [other]
        lengths[other] = length
        if labels[other] is None:
            labels[other] = labels[keep]
        return self._rebuild(kids, keep, names, lengths, labels, supports)

    def resolve_binary(self) -> Tree:
        """Resolve multifurcations with zero-length branches (exact for likelihood and parsimony
        length only for binary-resolved models; use it for pruning, not for Sankoff counts)."""
        kids, names, lengths, labels, supports = self._lists()
        for node in range(self.node_count):
            while len(kids[node]) > 2:
                first, second = kids[node][0], kids[node][1]
                new = len(names)
                names.append(None)
                lengths.append(0.0)
                labels.append(None)
                supports.append(None)
                kids.append([first, second])
                kids[node] = [new] + kids[node][2:]
        return self._rebuild(kids, self.root, names, lengths, labels, supports)

    def reroot_above(self, node: int) -> Tree:
        """Root on the branch above ``node`` (split in half); used to test the pulley principle."""
        if node == self.root:
            return self
        adjacency: dict[int, list[int]] = {v: [] for v in range(self.node_count)}
        edge_length: dict[frozenset, float] = {}
        for v in range(self.node_count - 1):
            p = int(self.parents[v])
            adjacency[v].append(p)
            adjacency[p].append(v)
            edge_length[frozenset((v, p))] = float(self.branch_lengths[v])
        names, labels, supports = list(self.names), list(self.labels), list(self.supports)
        new_root = self.node_count
        names.append(None)
        labels.append(None)
        supports.append(None)
        parent = int(self.parents[node])
        half = edge_length[frozenset((node, parent))] / 2
        children: list[list[int]] = [[] for _ in range(self.node_count + 1)]
        lengths = [0.0] * (self.node_count + 1)
        children[new_root] = [node, parent]
        lengths[node] = lengths[parent] = half
        stack = [(node, parent), (parent, node)]
        while stack:
            v, came_from = stack.pop()
            for w in adjacency[v]:
                if w != came_from:
                    children[v].append(w)
                    lengths[w] = edge_length[frozenset((v, w))]
                    stack.append((w, v))
        # A former root left with a single child is suppressed.
        for v in range(self.node_count):
            if len(children[v]) == 1 and v != new_root:
                (only,) = children[v]
                for u in range(self.node_count + 1):
                    if v in children[u]:
                        children[u][children[u].index(v)] = only
                        lengths[only] += lengths[v]
        return self._rebuild(children, new_root, names, lengths, labels, supports)

    # ------------------------------------------------------------------ output
    def to_newick(self, branch_lengths=None, *, precision: int = 10, labels: bool = False) -> str:
        lengths = self.branch_lengths if branch_lengths is None else np.asarray(branch_lengths)
        kids = self.children
        # Canonical child order (by smallest leaf below) so that parse(to_newick(t)) is stable.
        first_leaf = np.arange(self.node_count)
        for v in range(self.node_count - 1):
            p = self.parents[v]
            first_leaf[p] = min(first_leaf[p], first_leaf[v])
        kids = [sorted(c, key=lambda v: first_leaf[v]) for c in kids]

        def fmt_name(name: str | None) -> str:
            if name is None:
                return ""
            if any(c in name for c in " ():,;[]'\t"):
                return "'" + name.replace("'", "''") + "'"
            return name

        def render(node: int) -> str:
            text = ""
            if kids[node]:
                text = "(" + ",".join(render(c) for c in kids[node]) + ")"
            text += fmt_name(self.names[node])
            if labels and self.labels[node]:
                text += "{" + self.labels[node] + "}"
            if node != self.root and np.isfinite(lengths[node]):
                text += f":{float(lengths[node]):.{precision}g}"
            return text

        return render(self.root) + ";"
