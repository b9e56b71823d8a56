"""FEL results in HyPhy 2.5's JSON layout, CSV, and a PNG plot."""

from __future__ import annotations

import numpy as np

from .fel import FelResult, input_lengths

HEADERS = [
    ["alpha", "Synonymous substitution rate at a site"],
    ["beta", "Non-synonymous substitution rate at a site"],
    ["alpha=beta", "The rate estimate under the neutral model"],
    ["LRT", "Likelihood ratio test statistic for beta = alpha, versus beta &neq; alpha"],
    ["p-value", "Asymptotic p-value for evidence of selection, i.e. beta &neq; alpha"],
    ["Total branch length",
     "The total length of branches contributing to inference at this site, and used to scale dN-dS"],
]  # fmt: skip
CI_HEADERS = [
    ["dN/dS LB", "95% profile likelihood CI lower bound for dN/dS (if available)"],
    ["dN/dS MLE", "Point estimate for site dN/dS"],
    ["dN/dS UB", "95% profile likelihood CI upper bound for dN/dS (if available)"],
]
ASYMPTOTIC = ["p-asmp", "p-value derived from the asymptotic test statistic"]
_NUC = "ACGT"


def _aicc(loglik: float, k: int, n: int) -> float:
    return -2.0 * loglik + 2.0 * k * n / max(n - k - 1, 1)


def table(result: FelResult) -> tuple[list[str], np.ndarray]:
    """Column names and ``[codon, column]`` rows (HyPhy's MLE.content order)."""
    names = [h[0] for h in HEADERS]
    cols = [result.alpha, result.beta, result.null_rate, result.lrt, result.p_value,
            result.total_branch_length]  # fmt: skip
    if result.dnds_ci is not None:
        names += [h[0] for h in CI_HEADERS]
        cols += list(result.dnds_ci.T)
    if result.p_asymptotic is not None:
        names.append(ASYMPTOTIC[0])
        cols.append(result.p_asymptotic)
    rows = np.column_stack(cols)
    return names, np.where(np.isfinite(rows), rows, 0.0)


def to_json(result: FelResult, *, file_name: str = "", sequences: int = 0) -> dict:
    """A dict in HyPhy 2.5 FEL's JSON layout."""
    g = result.global_fit
    names, rows = table(result)
    headers = HEADERS + (CI_HEADERS if result.dnds_ci is not None else [])
    if result.p_asymptotic is not None:
        headers = headers + [ASYMPTOTIC]
    content = {str(k): rows[result.partition == k].tolist() for k in range(len(result.partitions))}
    branch_count = sum(int(p.data.free.sum()) for p in result.partitions)
    codon_sites = int(len(result.alpha))
    # HyPhy's AIC-c sample size: characters x sequences (nucleotides for GTR, codons for MG94)
    nuc_sites = 3 * codon_sites * max(sequences, 1)
    codon_obs = codon_sites * max(sequences, 1)
    gtr_k = branch_count + 5 + 3
    mg_k = branch_count + 5 + len(np.unique(g.omega[: 2 if _has_background(result) else 1]))
    rates = {}
    for (_i, a), (_j, b) in [((0, "A"), (1, "C")), ((0, "A"), (2, "G")), ((0, "A"), (3, "T")),
                           ((1, "C"), (2, "G")), ((1, "C"), (3, "T")), ((2, "G"), (3, "T"))]:  # fmt: skip
        k = ["AC", "AG", "AT", "CG", "CT", "GT"].index(a + b)
        rates[f"Substitution rate from nucleotide {a} to nucleotide {b}"] = float(g.gtr_rates[k])
    omega_rates = {"non-synonymous/synonymous rate ratio for *test*": [[float(g.omega[0]), 1]]}
    if _has_background(result):
        omega_rates["non-synonymous/synonymous rate ratio for *background*"] = [[float(g.omega[1]), 1]]
    attributes, tested, trees = {}, {}, {}
    for k, part in enumerate(result.partitions):
        gtr_len = input_lengths(part, g.gtr_lengths[k])
        mg_len = input_lengths(part, g.mg94_lengths(k))
        attrs, tst = {}, {}
        for v in range(part.tree.node_count - 1):
            name = part.node_names[v]
            entry = {"Global MG94xREV": float(mg_len[v]), "Nucleotide GTR": float(gtr_len[v])}
            if v < part.tree.leaf_count:
                entry["original name"] = name
            attrs[name] = entry
            tst[name] = "test" if part.tested_input[v] else "background"
        attributes[str(k)] = attrs
        tested[str(k)] = tst
        from .fel import dumps_tree

        trees[str(k)] = dumps_tree(part, np.zeros(part.binary.node_count)).replace(":0", "")
    attributes["attributes"] = {
        "Global MG94xREV": {"attribute type": "branch length", "display order": 1},
        "Nucleotide GTR": {"attribute type": "branch length", "display order": 0},
        "original name": {"attribute type": "node label", "display order": -1},
    }
    out = {
        "MLE": {"headers": headers, "content": content},
        "analysis": {
            "info": "FEL (Fixed Effects Likelihood) estimates site-wise synonymous (alpha) and "
            "non-synonymous (beta) rates and uses a likelihood ratio test to determine if "
            "beta != alpha at a site (phylojax implementation of HyPhy 2.5 FEL).",
            "citation": "Kosakovsky Pond SL, Frost SDW (2005) Not So Different After All: A "
            "Comparison of Methods for Detecting Amino Acid Sites Under Selection. Mol Biol Evol "
            "22(5):1208-1222",
            "version": "2.1 (phylojax)",
        },
        "branch attributes": attributes,
        "data partitions": {
            str(k): {"coverage": [part.columns.tolist()], "name": part.name}
            for k, part in enumerate(result.partitions)
        },
        "fits": {
            "Nucleotide GTR": {
                "AIC-c": _aicc(g.gtr_loglik, gtr_k, nuc_sites),
                "Equilibrium frequencies": [[float(x)] for x in g.nucleotide_frequencies],
                "Log Likelihood": g.gtr_loglik,
                "Rate Distributions": rates,
                "display order": 0,
                "estimated parameters": gtr_k,
            },
            "Global MG94xREV": {
                "AIC-c": _aicc(g.loglik, mg_k + 9, codon_obs),
                "Equilibrium frequencies": [[float(x)] for x in g.codon_frequencies],
                "Log Likelihood": g.loglik,
                "Rate Distributions": omega_rates,
                "display order": 1,
                "estimated parameters": mg_k + 9,
            },
        },
        "input": {
            "file name": file_name,
            "number of sequences": sequences,
            "number of sites": codon_sites,
            "partition count": len(result.partitions),
            "trees": trees,
        },
        "tested": tested,
        "timers": {
            "Total time": {"order": 0, "timer": result.timers.get("Total time", 0.0)},
            "Model fitting": {"order": 1, "timer": result.timers.get("Model fitting", 0.0)},
            "FEL analysis": {"order": 2, "timer": result.timers.get("FEL analysis", 0.0)},
        },
        "settings": {k: v for k, v in result.options.items()},
    }
    if result.bootstrap_lrt is not None:
        out["MLE"]["LRT"] = {
            str(k): {
                str(i): [[float(x)] for x in row]
                for i, row in enumerate(result.bootstrap_lrt[result.partition == k])
            }
            for k in range(len(result.partitions))
        }
    return out


def _has_background(result: FelResult) -> bool:
    return any(bool(np.any(p.data.background)) for p in result.partitions)


def to_csv(result: FelResult) -> str:
    names, rows = table(result)
    lines = ["codon,partition," + ",".join(names) + ",class"]
    pos, neg = result.positive, result.negative
    for i, row in enumerate(rows):
        cls = "positive" if pos[i] else "negative" if neg[i] else ""
        values = ",".join(f"{x:.10g}" for x in row)
        lines.append(f"{i + 1},{result.partition[i]},{values},{cls}")
    return "\n".join(lines) + "\n"


def summary(result: FelResult) -> str:
    p = result.options["pvalue"]
    return (
        f"Found {int(result.positive.sum())} sites under pervasive positive diversifying and "
        f"{int(result.negative.sum())} sites under negative selection at p ≤ {p:g}"
    )


def plot(result: FelResult, path: str) -> None:
    """PNG: alpha, beta and -log10 p along the alignment; significant sites marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(1, len(result.alpha) + 1)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, len(x) / 40), 6), sharex=True)
    ax1.plot(x, result.alpha, lw=0.8, label="alpha (dS)")
    ax1.plot(x, result.beta, lw=0.8, label="beta (dN)")
    ax1.set_ylabel("site rate")
    ax1.set_yscale("symlog", linthresh=1.0)
    ax1.legend(loc="upper right")
    logp = -np.log10(np.maximum(result.p_value, 1e-300))
    ax2.bar(x, logp, color="0.7", width=1.0)
    for mask, color, label in ((result.positive, "tab:red", "positive"),
                               (result.negative, "tab:blue", "negative")):  # fmt: skip
        ax2.scatter(x[mask], logp[mask], color=color, s=10, label=label, zorder=3)
    ax2.axhline(-np.log10(result.options["pvalue"]), color="k", lw=0.6, ls="--")
    ax2.set_ylabel("-log10 p")
    ax2.set_xlabel("codon")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
