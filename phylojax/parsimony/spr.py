"""Exact score change of every SPR move, vectorised over destinations and sites.

Move ``(src, dst)``: prune the subtree at ``src`` and insert a new node on the edge
``(parent(dst), dst)`` with children ``{dst, src}``; ``dst`` is not in the subtree of ``src`` and is
not the root; a unary node left behind is suppressed.  ``delta = new length - old length``.

Why it is exact and cheap (Goloboff 1996, "Methods for faster parsimony analysis", Cladistics
12:199, extended to polytomies with Hartigan's counts):  attaching a subtree whose optimal set is
``X`` on an edge whose *edge set* (states optimal for a degree-2 node on that edge) is ``E`` adds
exactly ``[X & E == 0]`` per site, whatever the degrees elsewhere.  So for a fixed ``src``

    delta(src, dst) = R(src) + sum_sites [S(src) & E'(dst) == 0]

where ``R(src) = L(pruned) + L(subtree) - L(tree)`` is found on the path from ``src`` to the root,
and ``E'`` are the edge sets of the pruned tree.  Pruning changes the down sets only on that path,
leaves the up sets of those ancestors unchanged, and changes the up sets elsewhere through one
preorder pass.  Up sets come from the first- and second-ranked state sets of each node's counts,
so the preorder pass is pure bit logic on packed words (8 sites x 4 bits per ``uint32``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .fitch import TreeArrays, argmax_set, down_pass

SITES_PER_WORD = 8
LOW = np.uint32(0x11111111)


# ------------------------------------------------------------------------------ packed bit logic
def pack(sets: jax.Array) -> jax.Array:
    """``uint8[..., site]`` (site a multiple of 8) -> ``uint32[..., site // 8]``."""
    shaped = sets.reshape(*sets.shape[:-1], -1, SITES_PER_WORD).astype(jnp.uint32)
    shifts = jnp.arange(SITES_PER_WORD, dtype=jnp.uint32) * 4
    return (shaped << shifts).sum(axis=-1, dtype=jnp.uint32)


def unpack(words: jax.Array) -> jax.Array:
    """Inverse of :func:`pack`."""
    shifts = jnp.arange(SITES_PER_WORD, dtype=jnp.uint32) * 4
    nibbles = (words[..., None] >> shifts) & jnp.uint32(15)
    return nibbles.reshape(*words.shape[:-1], -1).astype(jnp.uint8)


def _nonempty_low(x):
    return (x | (x >> 1) | (x >> 2) | (x >> 3)) & LOW


def _select(x, a, b):
    """Per site: ``a`` where ``x`` is non-empty, else ``b``."""
    mask = _nonempty_low(x) * jnp.uint32(15)
    return (a & mask) | (b & ~mask)


def _intersect_or_union(a, b):
    both = a & b
    return _select(both, both, a | b)


def _ranked_sets_with(d0, d1, d2, x):
    """Top and second sets of ``counts + [s in x]`` given the top three sets of ``counts``."""
    hit = d0 & x
    f0 = _select(hit, hit, d0 | (d1 & x))
    f1 = _select(hit, (d0 & ~x) | (d1 & x), (d1 & ~x) | (d2 & x))
    return f0, f1


def _up_set(f0, f1, s):
    """Optimal set of ``counts - [state in s]`` given its top (``f0``) and second (``f1``) sets."""
    rest = f0 & ~s
    return _select(rest, rest, f0 | (f1 & ~s))


def _remove_child(d, x):
    """Ranked sets (five levels in, four out) of ``counts - [s in x]``, and the sites
    (low bit per nibble) where the maximum count dropped by one."""
    d0, d1, d2, d3, d4 = d
    rest = d0 & ~x
    stays = _nonempty_low(rest)
    mask = stays * jnp.uint32(15)
    a = (rest, (d0 & x) | (d1 & ~x), (d1 & x) | (d2 & ~x), (d2 & x) | (d3 & ~x))
    b = (d0 | (d1 & ~x), (d1 & x) | (d2 & ~x), (d2 & x) | (d3 & ~x), (d3 & x) | (d4 & ~x))
    levels = tuple((u & mask) | (v & ~mask) for u, v in zip(a, b))
    return levels, LOW & ~stays


def _add_child(d, x):
    """Ranked sets (four levels in, three out) of ``counts + [s in x]``, and the sites where
    the maximum rose by one."""
    d0, d1, d2, d3 = d
    hit = d0 & x
    rises = _nonempty_low(hit)
    mask = rises * jnp.uint32(15)
    a = (hit, (d0 & ~x) | (d1 & x), (d1 & ~x) | (d2 & x))
    b = (d0 | (d1 & x), (d1 & ~x) | (d2 & x), (d2 & ~x) | (d3 & x))
    levels = tuple((u & mask) | (v & ~mask) for u, v in zip(a, b))
    return levels, rises


def _empty_count(x):
    """Number of sites whose nibble in ``x`` is empty; ``uint32[..., word] -> int32[...]``."""
    empty = LOW & ~_nonempty_low(x)
    return jax.lax.population_count(empty).astype(jnp.int32).sum(axis=-1)


# ------------------------------------------------------------------------------ per-tree state
class PassState(NamedTuple):
    """Per-tree sets for move scoring (``n2 = node slots + 2``, ``word = padded site / 8``).

    sets: ``uint8[n2, site]`` down sets; counts: ``uint8[n2, site, 4]``; local: ``int32[n2, site]``;
    packed: ``uint32[n2, word]`` down sets; ranked: five ``uint32[n2, word]``, the states whose
    child count is ``max - k`` for ``k = 0..4``; up: ``uint32[n2, word]`` up sets (optimal set at the parent
    of the tree with the node's subtree removed).
    """

    sets: jax.Array
    counts: jax.Array
    local: jax.Array
    packed: jax.Array
    ranked: tuple[jax.Array, ...]
    up: jax.Array
    f0: jax.Array
    f1: jax.Array
    edge: jax.Array


def pad_sites(leaf_sets: np.ndarray) -> np.ndarray:
    """Pad the site axis to a multiple of 8 with all-state sets (which cost nothing)."""
    leaf_count, site_count = leaf_sets.shape
    padded = -(-max(site_count, 1) // SITES_PER_WORD) * SITES_PER_WORD
    out = np.full((leaf_count, padded), 15, dtype=np.uint8)
    out[:, :site_count] = leaf_sets
    return out


def _preorder(arrays: TreeArrays, st_packed, d0, d1, d2, f0, f1, keep, src, anc_dist, anc_lca):
    """Preorder pass: up sets of non-kept nodes; kept nodes (the src's ancestors) keep the given
    ranked sets.  Also distance from ``src``, lca with ``src`` and subtree-of-``src`` flags."""
    n2 = arrays.parents.shape[0]
    up = jnp.zeros_like(st_packed)
    dist = anc_dist
    lca = anc_lca
    inside = jnp.zeros(n2, bool).at[src].set(True)

    def step(carry, level):
        f0, f1, up, dist, lca, inside = carry
        p = arrays.parents[level]
        new_up = _up_set(f0[p], f1[p], st_packed[level])
        g0, g1 = _ranked_sets_with(d0[level], d1[level], d2[level], new_up)
        kept = keep[level][:, None]
        f0 = f0.at[level].set(jnp.where(kept, f0[level], g0))
        f1 = f1.at[level].set(jnp.where(kept, f1[level], g1))
        up = up.at[level].set(new_up)
        fixed = keep[level] | (level == src)
        dist = dist.at[level].set(jnp.where(fixed, dist[level], dist[p] + 1))
        lca = lca.at[level].set(jnp.where(fixed, lca[level], lca[p]))
        inside = inside.at[level].set(inside[level] | inside[p])
        return (f0, f1, up, dist, lca, inside), None

    carry = (f0, f1, up, dist, lca, inside)
    (f0, f1, up, dist, lca, inside), _ = jax.lax.scan(step, carry, arrays.down_levels)
    return up, dist, lca, inside


@jax.jit
def prepare(leaf_sets: jax.Array, arrays: TreeArrays) -> PassState:
    """Down pass, ranked count sets and the up pass of the unmodified tree.

    ``leaf_sets``: ``uint8[leaf, site]`` with ``site`` a multiple of 8 (:func:`pad_sites`).
    """
    sets, counts, local = down_pass(leaf_sets, arrays)
    n2 = sets.shape[0]
    packed = pack(sets)
    ranked = tuple(pack(argmax_set(counts, k)) for k in range(5))
    d0, d1, d2 = ranked[:3]
    root = arrays.root
    keep = jnp.zeros(n2, bool).at[root].set(True)
    zeros = jnp.zeros(n2, jnp.int32)
    up, _, _, _ = _preorder(arrays, packed, d0, d1, d2, d0, d1, keep, root, zeros, zeros)
    f0, f1 = _ranked_sets_with(d0, d1, d2, up)
    f0 = f0.at[root].set(d0[root])
    f1 = f1.at[root].set(d1[root])
    edge = _intersect_or_union(packed, up)
    return PassState(sets, counts, local, packed, ranked, up, f0, f1, edge)


def _path_pass(arrays: TreeArrays, state: PassState, src, ancestors):
    """Pruned down sets and ranked-with-up sets on the path from ``src`` to the root, the removal
    cost ``R(src)``, and the words (8 sites each) where anything on the path changed: elsewhere
    the pruned tree's up sets and edge sets equal the original ones."""
    sink = arrays.parents.shape[0] - 1
    valid = ancestors != sink
    site_count = state.packed.shape[-1] * SITES_PER_WORD

    def path_step(carry, inp):
        # Replace the child on the path (old set) by its pruned version (new set; empty for
        # src itself) in the ancestor's ranked count sets, all on packed words.
        old_child, new_child, first = carry
        a, ok = inp
        ranked = tuple(r[a] for r in state.ranked)
        levels, dropped = _remove_child(ranked, old_child)
        levels, hit = _add_child(levels, new_child)
        # local = k - max count: k drops by one at the first step; max drops / rises per site.
        d_r = (
            jax.lax.population_count(dropped).astype(jnp.int32).sum()
            - jax.lax.population_count(hit).astype(jnp.int32).sum()
            - first.astype(jnp.int32) * site_count
        )
        d_r = jnp.where(ok, d_r, 0)
        f0, f1 = _ranked_sets_with(levels[0], levels[1], levels[2], state.up[a])
        is_root = a == arrays.root
        f0 = jnp.where(is_root, levels[0], f0)
        f1 = jnp.where(is_root, levels[1], f1)
        changed = (levels[0] != state.packed[a]) | (f0 != state.f0[a]) | (f1 != state.f1[a])
        changed = changed & ok
        return (state.packed[a], levels[0], jnp.asarray(False)), (levels[0], f0, f1, d_r, changed)

    start = (state.packed[src], jnp.zeros_like(state.packed[src]), jnp.asarray(True))
    _, (path_sets, path_f0, path_f1, d_r, changed) = jax.lax.scan(
        path_step, start, (ancestors, valid)
    )
    return path_sets, path_f0, path_f1, d_r.sum(), changed.any(axis=0)


@jax.jit
def affected_words(arrays: TreeArrays, state: PassState, sources, ancestors):
    """``int32[batch]``: number of words whose sets change when each source is pruned."""
    one = lambda s, a: _path_pass(arrays, state, s, a)[4].sum(dtype=jnp.int32)
    return jax.vmap(one)(sources, ancestors)


def _score_src(arrays: TreeArrays, state: PassState, src, ancestors, words=None):
    """Exact delta of moving ``src`` to every node; ``ancestors: int32[path]`` padded with SINK.

    With ``words = K`` the preorder pass runs only on the first ``K`` changed words (the caller
    guarantees that at most ``K`` change, see :func:`affected_words`); the other words contribute
    their terms from the unmodified tree's edge sets.  Returns ``(delta, dist, lca, inside)``,
    each ``[n2]``.
    """
    n2 = arrays.parents.shape[0]
    sink = n2 - 1
    valid = ancestors != sink
    path_sets, path_f0, path_f1, removal, changed = _path_pass(arrays, state, src, ancestors)
    s_src = state.packed[src]
    if words is None:
        idx = jnp.arange(state.packed.shape[-1])
        s_c = s_src
        base = 0
    else:
        idx = jnp.nonzero(changed, size=words, fill_value=0)[0]
        used = jnp.arange(words) < changed.sum()
        # Unused slots get the all-state set: they add nothing to either term below.
        s_c = jnp.where(used, s_src[idx], jnp.uint32(0xFFFFFFFF))
        base = _empty_count(s_src & state.edge) - _empty_count(s_c & state.edge[:, idx])
    cols = lambda x: x[..., idx]
    f0 = jnp.zeros((n2, idx.shape[0]), jnp.uint32).at[ancestors].set(cols(path_f0))
    f1 = jnp.zeros((n2, idx.shape[0]), jnp.uint32).at[ancestors].set(cols(path_f1))
    keep = jnp.zeros(n2, bool).at[ancestors].set(valid).at[sink].set(False)
    steps = jnp.arange(1, ancestors.shape[0] + 1, dtype=jnp.int32)
    anc_dist = jnp.zeros(n2, jnp.int32).at[ancestors].set(steps)
    anc_lca = jnp.zeros(n2, jnp.int32).at[ancestors].set(ancestors).at[src].set(src)
    packed = cols(state.packed)
    up, dist, lca, inside = _preorder(
        arrays, packed, *(cols(r) for r in state.ranked[:3]), f0, f1, keep, src, anc_dist, anc_lca
    )
    kept = keep[:, None]
    down = jnp.where(kept, packed.at[ancestors].set(cols(path_sets)), packed)
    edge = _intersect_or_union(down, jnp.where(kept, cols(state.up), up))
    delta = removal + base + _empty_count(s_c & edge)
    return delta, dist, lca, inside


@functools.partial(jax.jit, static_argnames="words")
def score_sources(arrays: TreeArrays, state: PassState, sources, ancestors, words=None):
    """Exact deltas for a block of sources.

    Args:
        sources: ``int32[chunk, batch]`` source nodes.
        ancestors: ``int32[chunk, batch, path]`` their ancestors (parent first), padded with SINK.

    Returns:
        ``(delta, dist, lca, inside)``, each ``[chunk, batch, n2]``: score change of moving the
        source onto the edge above each node, edges on the path, the lca, and whether the node
        lies in the source's subtree (not a legal destination).
        words: if given, every source changes at most this many words (:func:`affected_words`).
    """
    per_batch = jax.vmap(lambda s, a: _score_src(arrays, state, s, a, words))
    return jax.lax.map(lambda xs: per_batch(*xs), (sources, ancestors))


# ------------------------------------------------------------------------------ numpy drivers
class Moves(NamedTuple):
    """All scored moves: ``int64[move]`` arrays of node indices, path lengths and deltas."""

    src: np.ndarray
    dst: np.ndarray
    lca: np.ndarray
    path_len: np.ndarray
    delta: np.ndarray


def ancestor_table(parents: np.ndarray, sources: np.ndarray, sink: int, path: int) -> np.ndarray:
    """``int32[len(sources), path]``: ancestors of each source (parent first), SINK-padded."""
    out = np.full((len(sources), path), sink, dtype=np.int32)
    for row, v in enumerate(sources):
        i = 0
        v = parents[v]
        while v >= 0:
            out[row, i] = v
            v = parents[v]
            i += 1
    return out


def _sources_and_path(parents, arrays: TreeArrays, sources, path: int):
    """Sources as int32 (every non-root node unless given), the sink node, and the ancestor-table
    width (at least the tree depth, rounded up to a multiple of 8 so few shapes are compiled)."""
    if sources is None:
        sources = np.flatnonzero(parents >= 0)
    sources = np.asarray(sources, dtype=np.int32)
    sink = arrays.parents.shape[0] - 1
    depth = np.asarray(arrays.depth)
    path = max(path, int(-(-max(int(depth.max()), 1) // 8) * 8))
    return sources, sink, path


def source_blocks(
    parents: np.ndarray, arrays: TreeArrays, batch: int = 64, sources=None, path: int = 0
):
    """Sources (every non-root node unless given) and their ancestor tables, as padded blocks."""
    parents = np.asarray(parents)
    sources, sink, path = _sources_and_path(parents, arrays, sources, path)
    n_chunks = -(-max(len(sources), 1) // batch)
    padded = np.full(n_chunks * batch, sources[0] if len(sources) else 0, dtype=np.int32)
    padded[: len(sources)] = sources
    anc = ancestor_table(parents, padded, sink, path)
    return sources, padded.reshape(n_chunks, batch), anc.reshape(n_chunks, batch, path)


COMPACT_WORDS = 8


def _round_chunks(count: int, batch: int) -> int:
    """Chunk count padded to a few distinct values (1, 2, 4, 8, then multiples of 8) so that
    repeated calls on changing trees reuse the compiled kernels."""
    chunks = max(-(-count // batch), 1)
    return 1 << (chunks - 1).bit_length() if chunks <= 8 else -(-chunks // 8) * 8


def score_moves(parents, arrays: TreeArrays, state: PassState, *, batch=64, sources=None, path=0,
                words=COMPACT_WORDS):
    """Exact deltas of every source's moves on the tree of ``arrays`` (numpy driver).

    Sources whose pruning changes at most ``words`` packed words run the preorder pass on those
    words only (the rest keep the unmodified tree's terms); the others run it on every word.
    Returns ``(sources, delta, dist, lca, inside)``, the last four ``[len(sources), n2]``.
    """
    parents = np.asarray(parents)
    sources, sink, path = _sources_and_path(parents, arrays, sources, path)
    anc = ancestor_table(parents, sources, sink, path)
    if words is not None and words < state.packed.shape[-1]:
        padded = _round_chunks(len(sources), batch) * batch
        src_p = np.resize(sources, padded)
        anc_p = np.resize(anc, (padded, path))
        counts = np.asarray(affected_words(arrays, state, jnp.asarray(src_p), jnp.asarray(anc_p)))
        small = counts[: len(sources)] <= words
    else:
        small = np.zeros(len(sources), bool)
    n2 = arrays.parents.shape[0]
    out = [np.zeros((len(sources), n2), np.int32) for _ in range(3)] + [np.zeros((len(sources), n2), bool)]
    for group, w in ((np.flatnonzero(small), words), (np.flatnonzero(~small), None)):
        if not len(group):
            continue
        chunks = _round_chunks(len(group), batch)
        rows = np.resize(group, chunks * batch)
        res = score_sources(
            arrays, state,
            jnp.asarray(sources[rows].reshape(chunks, batch)),
            jnp.asarray(anc[rows].reshape(chunks, batch, path)),
            words=w,
        )
        for target, r in zip(out, res):
            target[group] = np.asarray(r).reshape(chunks * batch, n2)[: len(group)]
    return (sources, *out)


def collect_moves(parents, sources, delta, dist, lca, inside, radius: int | None) -> Moves:
    """Legal moves (``dst`` not in the subtree, not the root, within ``radius``) in row order."""
    parents = np.asarray(parents)
    n = len(parents)
    k = len(sources)
    delta = np.asarray(delta).reshape(-1, delta.shape[-1])[:k, :n]
    dist = np.asarray(dist).reshape(-1, dist.shape[-1])[:k, :n]
    lca = np.asarray(lca).reshape(-1, lca.shape[-1])[:k, :n]
    inside = np.asarray(inside).reshape(-1, inside.shape[-1])[:k, :n]
    ok = ~inside & (parents >= 0)[None, :]
    if radius is not None:
        ok &= dist <= radius
    rows, cols = np.nonzero(ok)
    return Moves(
        src=sources[rows].astype(np.int64),
        dst=cols.astype(np.int64),
        lca=lca[rows, cols].astype(np.int64),
        path_len=dist[rows, cols].astype(np.int64),
        delta=delta[rows, cols].astype(np.int64),
    )


def score_all_moves(parents, leaf_sets, arrays: TreeArrays, *, radius=None, batch=64, sources=None,
                    words=COMPACT_WORDS):
    """Exact delta of every SPR move within ``radius`` (all moves if ``None``).

    ``parents``: numpy parent array of the tree that ``arrays`` describes (``-2`` unused slots);
    ``leaf_sets``: ``uint8[leaf, site]``.  Constant-length sites are dropped (they change no delta).
    """
    from .fitch import constant_length_sites

    leaf_sets = np.asarray(leaf_sets)
    mask, _ = constant_length_sites(leaf_sets)
    informative = pad_sites(leaf_sets[:, ~mask])
    state = prepare(jnp.asarray(informative), arrays)
    sources, *out = score_moves(parents, arrays, state, batch=batch, sources=sources, words=words)
    return collect_moves(parents, sources, *out, radius)


# ------------------------------------------------------------------------------ apply / undo
class Undo(NamedTuple):
    """Journal of a move: old values of the changed parent entries and the old array length."""

    changed: tuple[tuple[int, int], ...]
    length: int


def subtree_contains(parents: np.ndarray, top: int, node: int) -> bool:
    while node >= 0:
        if node == top:
            return True
        node = int(parents[node])
    return False


def apply_spr(parents: np.ndarray, src: int, dst: int) -> tuple[np.ndarray, Undo]:
    """Apply the move to a parent array (``-1`` root, ``-2`` free slot); returns a new array.

    Node ids other than the inserted node are stable.  The inserted node reuses the slot of a
    parent that became unary (and is suppressed), else the first free slot, else a new slot.
    """
    from ..errors import input_error

    old = np.asarray(parents, dtype=np.int64)
    new = old.copy()
    src, dst = int(src), int(dst)
    n = len(old)
    if not (0 <= src < n and 0 <= dst < n) or old[src] == -2 or old[dst] == -2:
        raise input_error(f"SPR move ({src}, {dst}) names a node that does not exist")
    if old[src] == -1 or old[dst] == -1:
        raise input_error(f"SPR move ({src}, {dst}): src and dst must not be the root")
    if subtree_contains(old, src, dst):
        raise input_error(f"SPR move ({src}, {dst}): dst lies in the subtree of src")
    p = int(old[src])
    siblings = [v for v in np.flatnonzero(old == p) if v != src]
    if len(siblings) == 1:  # p becomes unary: suppress it and reuse its slot
        (sib,) = siblings
        new[sib] = old[p]
        if dst == p:
            dst = int(sib)
        slot = p
    else:
        free = np.flatnonzero(new == -2)
        slot = int(free[0]) if len(free) else n
        if slot == n:
            new = np.append(new, -2)
    grand = int(new[dst])
    new[slot] = grand
    new[dst] = slot
    new[src] = slot
    changed = tuple((int(i), int(old[i]) if i < n else -2) for i in np.flatnonzero(
        np.append(old, [-2] * (len(new) - n)) != new))
    return new, Undo(changed, n)


def undo_spr(parents: np.ndarray, undo: Undo) -> np.ndarray:
    """Restore the parent array that :func:`apply_spr` was given."""
    out = np.asarray(parents, dtype=np.int64).copy()
    for index, value in undo.changed:
        out[index] = value
    return out[: undo.length]
