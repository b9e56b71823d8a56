"""The global fits' optimiser pieces: the block-scaled preconditioner against closed forms."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from phylojax.selection.global_fits import block_scale, maximise, sqrt_scale

jax.config.update("jax_enable_x64", True)


def _quadratic(curvature, centre):
    """``f(x) = -sum c_i (x_i - m_i)^2 / 2`` and its gradient (the Hessian is ``-diag(c)``)."""
    c, m = jnp.asarray(curvature), jnp.asarray(centre)

    @jax.jit
    def value_and_grad(x):
        return -0.5 * jnp.sum(c * (x - m) ** 2), -c * (x - m)

    return value_and_grad


def test_block_scale_matches_the_curvature_of_each_block():
    # within a block the curvature goes like 1 / x0 (branch lengths), with a factor per block
    x0 = np.array([0.5, 2.0, 1.0, 0.05, 0.2, 0.8, 0.01])
    blocks = [np.arange(7) < 2, np.arange(7) == 2, np.arange(7) >= 3]
    factors = np.array([400.0, 900.0, 25.0])  # c_i = factor(block) / x0_i
    block_of = np.select(blocks, [0, 1, 2])
    curvature = factors[block_of] / x0
    vg = _quadratic(curvature, x0 * 1.3)
    scale, f0, _, evaluations = block_scale(vg, x0, blocks, np.full(7, 1e4))
    assert evaluations == 1 + len(blocks)
    assert np.isclose(f0, float(vg(jnp.asarray(x0))[0]))
    # a quadratic's finite differences are exact: scale_i = 1 / sqrt(c_i)
    np.testing.assert_allclose(scale, 1.0 / np.sqrt(curvature), rtol=1e-6)


def test_block_scale_keeps_sqrt_where_the_probe_finds_no_curvature():
    x0 = np.array([1.0, 4.0, 0.3])
    curvature = np.array([0.0, 0.0, 7.0])  # the first block is flat
    vg = _quadratic(curvature, np.zeros(3))
    blocks = [np.array([True, True, False]), np.array([False, False, True])]
    scale, _, _, _ = block_scale(vg, x0, blocks, np.full(3, 1e4))
    np.testing.assert_allclose(scale[:2], sqrt_scale(x0)[:2])
    np.testing.assert_allclose(scale[2], 1.0 / np.sqrt(7.0), rtol=1e-6)


def test_block_scale_probes_inside_the_upper_bound():
    x0 = np.array([1.0, 10000.0])
    quadratic = _quadratic(np.array([3.0, 5.0]), np.zeros(2))
    points = []

    def vg(x):
        points.append(np.asarray(x))
        return quadratic(x)

    blocks = [np.array([True, False]), np.array([False, True])]
    scale, _, _, _ = block_scale(vg, x0, blocks, np.array([1e4, 1e4]))
    np.testing.assert_allclose(scale, 1.0 / np.sqrt([3.0, 5.0]), rtol=1e-6)
    # the parameter at its bound is probed downwards, never beyond it
    assert all(np.all(p <= 1e4) for p in points)
    assert any(p[1] < 1e4 for p in points)


def test_maximise_with_block_scale_reaches_the_optimum_and_reuses_f0():
    x0 = np.array([0.5, 2.0, 0.05, 0.2])
    centre = np.array([0.7, 1.5, 0.09, 0.1])
    curvature = np.array([5e3, 5e3, 40.0, 40.0]) / x0
    calls = []
    vg = _quadratic(curvature, centre)

    def counted(x):
        calls.append(np.asarray(x))
        return vg(x)

    blocks = [np.arange(4) < 2, np.arange(4) >= 2]
    scale, f0, g0, _ = block_scale(vg, x0, blocks, np.full(4, 1e4))
    x, f, n = maximise(counted, x0, np.full(4, 1e-9), np.full(4, 1e4), x_scale=scale, f0=f0, g0=g0)
    np.testing.assert_allclose(x, centre, atol=1e-6)
    assert f > -1e-9
    # f0 and g0 given: maximise never evaluates the start (n counts its evaluations)
    assert len(calls) == n
    assert not any(np.allclose(c, x0) for c in calls)
    calls.clear()
    x, _, n = maximise(counted, x0, np.full(4, 1e-9), np.full(4, 1e4), x_scale=scale)
    np.testing.assert_allclose(x, centre, atol=1e-6)
    # without them the start is evaluated once, not again by L-BFGS-B's first call
    assert len(calls) == n
    assert sum(np.allclose(c, x0) for c in calls) == 1


def test_full_fit_recovers_from_a_start_that_pushes_omega_onto_its_bound(monkeypatch):
    """The full MG94 fit started where the proportional fit starts (omega = 1, GTR lengths scaled),
    as if the proportional fit had stopped at once. On p51 lnL falls steeply in omega towards
    ~0.23, so L-BFGS-B's first steps project omega onto its lower bound; at omega = 0 lnL is -inf
    (no non-synonymous change possible). With 0 as the bound the fit crawled along that wall and
    stopped after 203 evaluations at -3245.21, 69 below the optimum; rates and omega are now
    bounded below by T_MIN (finite lnL, a gradient pointing back) and snapped to 0 afterwards
    when that does not lower lnL, as branch lengths are."""
    import phylojax.selection.global_fits as G
    from phylojax.io import read_alignment
    from phylojax.models.codon import codon_frequencies
    from phylojax.selection.fel import prepare_partitions

    aln = read_alignment(pathlib.Path(__file__).parent / "data" / "hyphy" / "p51.nex")
    parts, nuc_pi, counts = prepare_partitions(aln)
    _, g = codon_frequencies(counts, "CF3X4", 1)
    data = [p.data for p in parts]
    reference = G.fit_global(data, nuc_pi, g)
    original = G.maximise

    def proportional_stops_at_its_start(value_and_grad, x0, *args, **kwargs):
        if len(x0) > 3:
            return original(value_and_grad, x0, *args, **kwargs)
        return np.asarray(x0, float), float(value_and_grad(jnp.asarray(x0))[0]), 1

    monkeypatch.setattr(G, "maximise", proportional_stops_at_its_start)
    fit = G.fit_global(data, nuc_pi, g)
    assert fit.steps["MG94 proportional"] == 1 and fit.proportional_omega[0] == 1.0
    assert fit.loglik >= reference.loglik - 1e-3
    assert fit.steps["MG94 full"] < 100
    assert np.isfinite(fit.loglik) and np.all(fit.omega > 0)
