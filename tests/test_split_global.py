"""FEL's global MG94 objective split by patterns over the workers (phylojax.selection.split_global).

Oracles: the objective of all patterns in this process (lnL and gradient are sums over patterns,
so the workers' shares must add up to it to rounding), and fit_global in this process."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from phylojax import workers
from phylojax.selection import global_fits, split_global

jax.config.update("jax_enable_x64", True)
HERE = pathlib.Path(__file__).parent / "data" / "hyphy"


def _problem(name="HepatitisD.nex"):
    from phylojax.io import read_alignment
    from phylojax.models.codon import codon_frequencies
    from phylojax.selection.fel import prepare_partitions

    parts, nuc_pi, counts = prepare_partitions(read_alignment(HERE / name))
    _, g = codon_frequencies(counts, "CF3X4", 1)
    return [p.data for p in parts], nuc_pi, g


def _x(parts):
    free = [np.asarray(p.free) for p in parts]
    lengths = np.concatenate([np.where(f, 0.01 + 0.2 * np.sin(np.arange(len(f))) ** 2, 0.0)
                              for f in free])  # fmt: skip
    return np.concatenate([[0.5, 0.3, 0.8, 1.7, 0.4], [0.35], lengths])


def _in_process(parts, g, x):
    free, codon, background, gg, two = global_fits._codon_arguments(parts, g)
    f, grad = global_fits._full_value_and_grad(jax.numpy.asarray(x), free, codon, background, gg,
                                               1, two)  # fmt: skip
    return float(f), np.asarray(grad)


@pytest.mark.parametrize("count", [2, 3])
def test_shares_add_up_to_the_whole(count):
    """Every pattern is in exactly one share with its weight; the padding weighs 0; and the
    objective over the shares sums to the objective over all patterns."""
    parts, _, g = _problem()
    data = parts[0].codon
    shares = split_global.share_patterns(data, count)
    assert len({s.pattern_count for s in shares}) == 1
    weights = np.concatenate([np.asarray(s.pattern_weights) for s in shares])
    real = weights > 0
    np.testing.assert_array_equal(weights[real], np.asarray(data.pattern_weights))
    tips = np.concatenate([np.asarray(s.tip_partials) for s in shares], axis=2)[:, :, real]
    np.testing.assert_array_equal(tips, np.asarray(data.tip_partials))
    x = _x(parts)
    whole = _in_process(parts, g, x)
    summed = [0.0, 0.0]
    for s in shares:
        f, grad = _in_process([global_fits.PartitionData(
            parts[0].nucleotide, s, parts[0].free, parts[0].background,
            parts[0].initial_lengths)], g, x)  # fmt: skip
        summed = [summed[0] + f, summed[1] + grad]
    np.testing.assert_allclose(summed[0], whole[0], rtol=1e-12)
    np.testing.assert_allclose(summed[1], whole[1], rtol=1e-9, atol=1e-9)


def test_only_large_problems_are_split(monkeypatch):
    parts, _, _ = _problem()
    codon = [p.codon for p in parts]
    monkeypatch.setenv("PHYLOJAX_WORKERS", "2")
    assert split_global.worth_splitting(codon) == 0  # 33 taxa x 183 patterns
    monkeypatch.setattr(split_global, "MIN_CELLS", 1000)
    assert split_global.worth_splitting(codon) == 2
    monkeypatch.setenv("PHYLOJAX_SPLIT_GLOBAL", "off")
    assert split_global.worth_splitting(codon) == 0
    monkeypatch.setenv("PHYLOJAX_SPLIT_GLOBAL", "on")
    monkeypatch.setenv("PHYLOJAX_WORKERS", "off")
    assert split_global.worth_splitting(codon) == 0


@pytest.mark.slow
def test_global_fit_on_workers_is_the_in_process_fit(monkeypatch):
    """The objective on two workers is the in-process one to rounding, and fit_global reaches
    the same optimum with it; a worker failure mid-fit falls back to this process."""
    parts, nuc_pi, g = _problem()
    monkeypatch.setenv("PHYLOJAX_WORKERS", "2")
    monkeypatch.setattr(split_global, "MIN_CELLS", 1000)
    split = split_global.install(parts, g, 1)
    assert isinstance(split, split_global.SplitObjective) and split.count == 2
    x = _x(parts)
    f, grad = split(x)
    whole = _in_process(parts, g, x)
    np.testing.assert_allclose(f, whole[0], rtol=1e-12)
    np.testing.assert_allclose(grad, whole[1], rtol=1e-9, atol=1e-9)
    split.close()
    assert workers.get().map(f"{split_global.__name__}:_installed", [(), ()]) == [[], []]

    on_workers = global_fits.fit_global(parts, nuc_pi, g)
    monkeypatch.setenv("PHYLOJAX_SPLIT_GLOBAL", "off")
    here = global_fits.fit_global(parts, nuc_pi, g)
    assert abs(on_workers.loglik - here.loglik) < 1e-3
    np.testing.assert_allclose(on_workers.omega, here.omega, rtol=1e-2)

    monkeypatch.setenv("PHYLOJAX_SPLIT_GLOBAL", "on")
    calls = {"n": 0}
    original = split_global.SplitObjective.__call__

    def failing(self, x):
        calls["n"] += 1
        if calls["n"] > 3:
            raise workers.WorkerError("worker on CPU 0 died (test)")
        return original(self, x)

    monkeypatch.setattr(split_global.SplitObjective, "__call__", failing)
    with pytest.warns(RuntimeWarning, match="fitting in this process"):
        fallback = global_fits.fit_global(parts, nuc_pi, g)
    assert calls["n"] == 4
    assert abs(fallback.loglik - here.loglik) < 1e-3
