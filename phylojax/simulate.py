"""Sequence simulation along a tree under a reversible model with +G and +I (``jax.random``).

Each site draws a rate category (uniform over the Γ categories) or, with probability ``pinv``,
is invariable (rate 0: the root state is copied to every tip, IQ-TREE's/Seq-Gen's convention);
the root state is drawn from the stationary frequencies, and every child state from the row of
``P(t * r)`` of its parent's state. Nodes are numbered so that a parent always comes after its
children (:class:`~phylojax.tree.Tree`: leaves, then internal nodes in postorder, root last), so one
``lax.scan`` over the nodes in reverse order visits every parent before its children. The result
depends only on the key: the same seed gives the same alignment on any machine.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .errors import InputError
from .models.eigen import transition_probs
from .models.nucleotide import ReversibleModel
from .models.rates import RateModel
from .tree import Tree


def _simulate(key, parents, branch_lengths, model, rates, site_count):
    node_count = parents.shape[0]
    k_root, k_cat, k_inv, k_nodes = jax.random.split(key, 4)
    freqs = model.frequencies
    category_count = rates.rates.shape[0]
    category = jax.random.choice(k_cat, category_count, (site_count,), p=rates.weights)
    invariant = jax.random.uniform(k_inv, (site_count,)) < rates.pinv
    eig = model.eigensystem()
    times = jnp.asarray(branch_lengths)[:, None] * rates.rates[None, :]
    probs = transition_probs(eig, times)  # node, category, state, state
    states = jnp.zeros((node_count, site_count), jnp.int32)
    root_states = jax.random.choice(k_root, freqs.shape[0], (site_count,), p=freqs)
    states = states.at[node_count - 1].set(root_states.astype(jnp.int32))

    def step(states, v):
        parent_states = states[parents[v]]
        rows = probs[v][category, parent_states]  # site, state
        logits = jnp.log(jnp.clip(rows, 1e-300, None))
        child = jax.random.categorical(jax.random.fold_in(k_nodes, v), logits, axis=-1)
        child = jnp.where(invariant, parent_states, child).astype(jnp.int32)
        return states.at[v].set(child), None

    order = jnp.arange(node_count - 2, -1, -1)
    states, _ = jax.lax.scan(step, states, order)
    return states


@eqx.filter_jit
def simulate_states(key, parents, branch_lengths, model, rates, site_count: int):
    """``int[node, site]`` states of every node; leaves are rows ``0..taxon_count-1``.

    Args:
        key: ``jax.random`` key.
        parents: ``int[node]`` parent of each node (root last, ``-1``), parents after children.
        branch_lengths: ``[node]`` expected substitutions per site (per codon for codon models).
        model, rates: the substitution model and the +G/+I rate model.
        site_count: number of sites (static).
    """
    return _simulate(key, parents, branch_lengths, model, rates, site_count)


def simulate_alignment(
    tree: Tree,
    model: ReversibleModel,
    rates: RateModel,
    site_count: int,
    *,
    seed: int = 0,
    state_labels: list[str] | None = None,
) -> dict[str, str]:
    """Simulate ``site_count`` sites along ``tree``; returns ``{taxon name: sequence}``.

    ``state_labels`` name the states (``"ACGT"`` for nucleotides, the 61 sense codons for codon
    models); the sequence is their concatenation.
    """
    if not tree.has_lengths:
        raise InputError(f"{tree.source}: every branch needs a length to simulate along it")
    if site_count < 1:
        raise InputError("the number of sites must be at least 1")
    labels = list(state_labels) if state_labels is not None else list("ACGT")
    if len(labels) != model.state_count:
        raise InputError(f"{len(labels)} state labels for a {model.state_count}-state model")
    states = simulate_states(
        jax.random.PRNGKey(seed),
        jnp.asarray(tree.parents, jnp.int32),
        jnp.asarray(np.nan_to_num(tree.branch_lengths)),
        model,
        rates,
        int(site_count),
    )
    leaves = np.asarray(states[: tree.leaf_count])
    table = np.array(labels)
    return {name: "".join(table[row]) for name, row in zip(tree.leaf_names, leaves)}


def to_fasta(sequences: dict[str, str], width: int = 60) -> str:
    """FASTA text of ``{name: sequence}`` (lines of ``width`` characters)."""
    out = []
    for name, seq in sequences.items():
        out.append(f">{name}")
        out.extend(seq[i : i + width] for i in range(0, len(seq), width))
    return "\n".join(out) + "\n"
