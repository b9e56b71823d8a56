"""SPR hill climbing, matOptimize-style: score every move within a radius exactly, apply the best
non-conflicting improving moves at once, rescore, repeat (Ye et al. 2022, "matOptimize",
Bioinformatics 38:3734).  An optional radius schedule (2, 4, ..., 64) widens the neighbourhood
once a radius is exhausted."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ..tree import Tree
from .fitch import constant_length_sites, parsimony_length, tree_arrays
from .spr import apply_spr, collect_moves, pad_sites, prepare, score_moves

DEFAULT_SCHEDULE = (2, 4, 8, 16, 32, 64)


class SearchResult(NamedTuple):
    """parents: final parent array (``-2`` free slots); lengths: length after each round (the
    first entry is the start); radii: the radius used in each round."""

    parents: np.ndarray
    lengths: list[int]
    radii: list[int]


def _path_nodes(parents: np.ndarray, src: int, dst: int, lca: int) -> set[int]:
    nodes = set()
    for start in (src, dst):
        v = start
        while v != lca and v >= 0:
            nodes.add(int(v))
            v = int(parents[v])
    nodes.add(int(lca))
    if parents[lca] >= 0:
        nodes.add(int(parents[lca]))
    return nodes


def is_noop(parents: np.ndarray, src: int, dst: int) -> bool:
    """True when the move leaves the topology unchanged (binary parent, dst = parent or sibling)."""
    p = int(parents[src])
    if int(np.count_nonzero(parents == p)) != 2:
        return False
    return dst == p or int(parents[dst]) == p


def select_moves(
    parents: np.ndarray, moves, limit: int | None = None, *, sideways: bool = False, rng=None
) -> list[tuple[int, int, int]]:
    """Improving moves, best first, whose paths (src..lca..dst plus the lca's parent) are
    pairwise disjoint; returns ``[(src, dst, delta)]``.  With ``sideways``: topology-changing
    moves of delta 0 in random order instead (plateau steps)."""
    if sideways:
        zero = np.flatnonzero(moves.delta == 0)
        order = zero[rng.permutation(len(zero))]
    else:
        order = np.lexsort((moves.dst, moves.src, moves.delta))
    taken: set[int] = set()
    chosen = []
    for i in order:
        if moves.delta[i] > 0 or (moves.delta[i] == 0 and not sideways):
            break
        if sideways and is_noop(parents, int(moves.src[i]), int(moves.dst[i])):
            continue
        nodes = _path_nodes(parents, int(moves.src[i]), int(moves.dst[i]), int(moves.lca[i]))
        if nodes & taken:
            continue
        taken |= nodes
        chosen.append((int(moves.src[i]), int(moves.dst[i]), int(moves.delta[i])))
        if limit and len(chosen) >= limit:
            break
    return chosen


def neighbourhood(parents: np.ndarray, seeds, count: int) -> np.ndarray:
    """The ``count`` non-root nodes nearest to ``seeds`` (breadth-first over tree edges, in a
    deterministic order): the sources whose best moves a local rearrangement most likely changed."""
    parents = np.asarray(parents)
    adj: dict[int, list[int]] = {}
    for v in np.flatnonzero(parents >= 0):
        p = int(parents[v])
        adj.setdefault(int(v), []).append(p)
        adj.setdefault(p, []).append(int(v))
    frontier = list(dict.fromkeys(int(x) for x in seeds if x >= 0 and parents[x] != -2))
    seen = set(frontier)
    out: list[int] = []
    while frontier and len(out) < count:
        nxt = []
        for v in frontier:
            if parents[v] >= 0:
                out.append(v)
            for w in adj.get(v, ()):
                if w not in seen:
                    seen.add(w)
                    nxt.append(w)
        frontier = nxt
    return np.array(out[:count], dtype=np.int32)


def compact(parents: np.ndarray, leaf_names) -> Tree:
    """Parent array with free slots -> :class:`Tree` with the given leaf names (slots
    ``0..leaf-1``) and unnamed internal nodes."""
    leaf_count = len(leaf_names)
    used = np.flatnonzero(parents != -2)
    kids: dict[int, list[int]] = {int(v): [] for v in used}
    root = -1
    for v in used:
        if parents[v] >= 0:
            kids[int(parents[v])].append(int(v))
        else:
            root = int(v)
    index = {int(v): i for i, v in enumerate(used)}
    children = [[index[c] for c in kids[int(v)]] for v in used]
    names = [str(leaf_names[v]) if v < leaf_count else None for v in used]
    return Tree.from_children(children, index[root], names=names, branch_lengths=[np.nan] * len(used))


def _escape(current, moves, rng, tries, sources, arrays_of, informative, path):
    """Delta-0 step plus an improving step found among nearby sources; ``(parents, tries used)``
    or ``None``."""
    zero = [
        i for i in np.flatnonzero(moves.delta == 0)
        if not is_noop(current, int(moves.src[i]), int(moves.dst[i]))
    ]
    order = rng.permutation(len(zero))[:tries]
    for used, k in enumerate(order, start=1):
        src, dst = int(moves.src[zero[k]]), int(moves.dst[zero[k]])
        cand, _ = apply_spr(current, src, dst)
        arrays = arrays_of(cand)
        state = prepare(informative, arrays)
        near = neighbourhood(cand, [src, dst, int(cand[src])], sources)
        srcs, *out = score_moves(cand, arrays, state, batch=sources, sources=near, path=path)
        found = collect_moves(cand, srcs, *out, None)
        if len(found.delta) and found.delta.min() < 0:
            best = np.lexsort((found.dst, found.src, found.delta))[0]
            cand, _ = apply_spr(cand, int(found.src[best]), int(found.dst[best]))
            return cand, used
    return None


def spr_search(
    parents: np.ndarray,
    leaf_sets: np.ndarray,
    *,
    schedule=None,
    max_rounds: int = 1000,
    plateau_rounds: int = 0,
    plateau_moves: int = 8,
    seed: int = 0,
    batch: int = 64,
    escape_tries: int = 100,
    escape_sources: int = 16,
    on_round=None,
) -> SearchResult:
    """Hill-climb with SPR moves until no move within the largest radius improves.

    Args:
        parents: ``int[node]`` parent array (``-1`` root), leaves ``0..leaf-1``.
        leaf_sets: ``uint8[leaf, site]`` bitsets.
        schedule: radii tried in turn; a radius is kept while it improves (``None``: all moves).
        plateau_rounds: at a local optimum, up to this many rounds that apply
            ``plateau_moves`` random delta-0 moves before climbing again; the best tree is kept.
        escape_tries: at a local optimum (after any plateau rounds), try up to this many
            topology-changing delta-0 moves, in an order drawn from ``seed``: apply one, score
            the ``escape_sources`` sources nearest to it exactly on the new tree, and if one of
            them now improves, apply its best move (length strictly drops) and climb again.
        on_round: optional callback ``(round, radius, length)``.
    """
    rng = np.random.default_rng(seed)
    leaf_sets = np.asarray(leaf_sets)
    leaf_count = leaf_sets.shape[0]
    mask, constant = constant_length_sites(leaf_sets)
    informative = jnp.asarray(pad_sites(leaf_sets[:, ~mask]))
    offset = int(constant.sum())
    slots = max(2 * leaf_count - 1, len(parents))
    current = np.full(slots, -2, dtype=np.int64)
    current[: len(parents)] = parents
    max_children = int(np.bincount(parents[parents >= 0]).max())

    first = tree_arrays(current, leaf_count, node_slots=slots, max_children=max_children)
    # Fixed padded shapes (levels, path) so that later rounds reuse the compiled kernels.
    steps = 2 * max(first.up_levels.shape[0], first.down_levels.shape[0])
    path = 2 * int(np.asarray(first.depth).max()) + 8

    def arrays_of(p):
        return tree_arrays(p, leaf_count, node_slots=slots, max_children=max_children, min_steps=steps)

    def length_of(arrays):
        return int(parsimony_length(informative, arrays)) + offset

    arrays = arrays_of(current)
    lengths = [length_of(arrays)]
    best_length, best_parents = lengths[0], current
    radii: list[int] = []
    schedule = list(schedule) if schedule else [None]
    stage = 0
    while stage < len(schedule) and len(radii) < max_rounds:
        radius = schedule[stage]
        state = prepare(informative, arrays)
        sources, *out = score_moves(current, arrays, state, batch=batch, path=path)
        moves = collect_moves(current, sources, *out, radius)
        chosen = select_moves(current, moves)
        if not chosen and plateau_rounds > 0 and stage == len(schedule) - 1:
            plateau_rounds -= 1
            sideways = select_moves(current, moves, plateau_moves, sideways=True, rng=rng)
            for src, dst, _ in sideways:
                current, _ = apply_spr(current, src, dst)
            arrays = arrays_of(current)
            continue
        if not chosen and escape_tries > 0 and stage == len(schedule) - 1:
            escaped = _escape(current, moves, rng, escape_tries, escape_sources, arrays_of,
                              informative, path)
            if escaped is not None:
                current, tries = escaped
                escape_tries -= tries
                arrays = arrays_of(current)
                new_length = length_of(arrays)
                if new_length >= lengths[-1]:  # cannot happen: the escape move's delta is exact
                    raise AssertionError("escape move did not improve")
                if new_length < best_length:
                    best_length, best_parents = new_length, current
                lengths.append(new_length)
                radii.append(-1 if radius is None else int(radius))
                if on_round is not None:
                    on_round(len(radii), radius, new_length)
                continue
            escape_tries = 0
        if not chosen:
            stage += 1
            continue
        candidate = current
        for src, dst, _ in chosen:
            candidate, _ = apply_spr(candidate, src, dst)
        cand_arrays = arrays_of(candidate)
        cand_length = length_of(cand_arrays)
        best = chosen[0]
        if cand_length > lengths[-1] + best[2]:  # interactions: fall back to the single best move
            candidate, _ = apply_spr(current, best[0], best[1])
            cand_arrays = arrays_of(candidate)
            cand_length = length_of(cand_arrays)
        current, arrays = candidate, cand_arrays
        if cand_length < best_length:
            best_length, best_parents = cand_length, current
        lengths.append(cand_length)
        radii.append(-1 if radius is None else int(radius))
        if on_round is not None:
            on_round(len(radii), radius, cand_length)
    return SearchResult(best_parents, lengths, radii)
