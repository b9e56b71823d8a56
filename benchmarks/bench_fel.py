"""HyPhy 2.5.47 FEL vs ``phylojax fel`` on the shared data sets: time, memory, agreement.

    python benchmarks/bench_fel.py [--sets CD2 p51 ...] [--hyphy-timings] [--no-warm]
                                   [--variants] [--keep DIR]

The default sets are the seven small ones; ``--sets HIV_RT --no-warm`` adds the 476-taxon set
(HyPhy ``CPU=1`` takes ~27 min there; agreement is against its frozen MPI-run JSON).

``--variants`` also runs the CD2 option variants that have HyPhy reference JSONs (``--srv No``,
``--branches Internal``, ``--branches GROUP1``, ``--ci``, ``--resample 20``; phylojax in a fresh
process each, empty compilation cache; HyPhy ``CPU=1`` timed beside it for ``--srv No`` and
``--branches Internal``) and compares them with ``reference/CD2.<variant>.FEL.json``.

For each set: HyPhy (``hyphy-avx CPU=1 fel``, run here unless ``--hyphy-timings`` reuses
../shared/data/hyphy/reference/timings.tsv), phylojax end to end in a fresh process (compilation
included, peak memory of its process tree, worker processes included) twice -- with an empty persistent compilation
cache, then with the cache the first run left -- and warm (the best of three ``fel()`` calls after a
first one in the same process; single calls on rbp3 ranged 4.8-6.6 s),
then agreement with HyPhy's frozen JSON: global MG94 lnL difference, max / median |ΔLRT|, and
classification differences at p <= 0.1 with the alternative lnL gain that explains each one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hyphy"
HYPHY = "/usr/lib/hyphy/bin/hyphy-avx"
SETS = {
    "CD2": "CD2.nex", "p51": "p51.nex", "HepatitisD": "HepatitisD.nex",
    "Bacterial_PTS": "Bacterial_PTS_trehalose_transporter_suIII.nex",
    "yokoyama_rh1": "yokoyama.rh1.cds.mod.1-990.nex", "rbp3": "rbp3.nex",
    "partitioned": "partitioned.nex",
}  # fmt: skip
# Not in the default list (HyPhy CPU=1 takes ~27 min): ``--sets HIV_RT --no-warm``. Its frozen
# HyPhy output is the MPI run's.
EXTRA_SETS = {"HIV_RT": "HIV_RT.nex"}
REFERENCE = {"HIV_RT": "HIV_RT.mpi3.FEL.json"}


def _tree_rss_kib(root: int) -> int:
    """Resident memory (KiB) of process ``root`` and all its descendants (phylojax's worker
    processes), from /proc; shared pages are counted once per process (an upper bound)."""
    import os

    parent, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(rss.get(pid, 0) for pid in tree)


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of the process tree (sampled every 0.1 s, worker processes
    included) and stdout of ``cmd``."""
    import os

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=None if env is None else {**os.environ, **env})  # fmt: skip
    peak = 0
    out = {}
    import threading

    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
    reader.start()
    while reader.is_alive():
        peak = max(peak, _tree_rss_kib(proc.pid))
        reader.join(0.1)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {out.get('stderr', '')[-2000:]}")
    return wall, peak / 1024, out["stdout"]


def hyphy_reference_time(name: str) -> float:
    for line in (SHARED / "reference" / "timings.tsv").read_text().splitlines():
        f = line.split("\t")
        if f[0] == name and f[3].startswith("default") and f[4] == "CPU=1":
            return float(f[5])
    return float("nan")


def rows_of(doc) -> np.ndarray:
    return np.concatenate([np.array(doc["MLE"]["content"][k]) for k in
                           sorted(doc["MLE"]["content"], key=int)])  # fmt: skip


def classes(rows, p=0.1):
    sig = rows[:, 4] <= p
    return sig & (rows[:, 0] < rows[:, 1]), sig & (rows[:, 0] >= rows[:, 1])


def warm_time(path: pathlib.Path) -> float:
    code = (  # the command line's malloc and XLA:CPU settings first (memory.py, xla_flags.py)
        "from phylojax.memory import keep_freed_memory; keep_freed_memory()\n"
        "from phylojax.xla_flags import tune_cpu_compiler; tune_cpu_compiler()\n"
        "import jax, time; jax.config.update('jax_enable_x64', True)\n"
        "from phylojax.io import read_alignment\nfrom phylojax.selection.fel import fel\n"
        f"a = read_alignment({str(path)!r}); fel(a)\n"
        "best = float('inf')\n"
        "for _ in range(3):\n"
        "    t = time.perf_counter(); fel(a); best = min(best, time.perf_counter() - t)\n"
        "print(best)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="*", default=list(SETS), choices=[*SETS, *EXTRA_SETS])
    ap.add_argument("--hyphy-timings", action="store_true",
                    help="reuse reference/timings.tsv instead of running HyPhy (except CD2)")
    ap.add_argument("--no-warm", action="store_true")
    ap.add_argument("--variants", action="store_true", help="CD2 option variants (see docstring)")
    ap.add_argument("--variant", action="append", choices=list(VARIANTS),
                    help="run only these CD2 variants (repeatable; implies --variants)")
    ap.add_argument("--keep", help="directory for phylojax's JSON outputs")
    args = ap.parse_args()
    keep = pathlib.Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    print("| set | taxa x codons | HyPhy s | phylojax cold s (empty cache) | cached s | warm s |"
          " ratio cold | ratio cached | ratio warm | peak MiB (pj / HyPhy) | ΔlnL global |"
          " min ΔLRT | max / median abs ΔLRT | class diffs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sets:
        path = SHARED / {**SETS, **EXTRA_SETS}[name]
        ref = json.loads((SHARED / "reference" / REFERENCE.get(name, f"{name}.FEL.json")).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            if args.hyphy_timings and name != "CD2":
                t_h, m_h = hyphy_reference_time(name), float("nan")
            else:
                t_h, m_h, _ = timed([HYPHY, "CPU=1", "fel", "--alignment", str(path),
                                     "--output", f"{tmp}/h.json"])  # fmt: skip
            out = pathlib.Path(tmp) / "p.json"
            # end to end in a fresh process: first with an empty compilation cache (what the
            # first run on a machine costs), then again with the cache that run left
            cmd = [sys.executable, "-m", "phylojax", "fel", "--alignment", str(path),
                   "--output", str(out), "--quiet"]  # fmt: skip
            env = {"PHYLOJAX_CACHE_DIR": f"{tmp}/xla"}
            t_p, m_p, _ = timed(cmd, env)
            t_c, _, _ = timed(cmd, env)
            doc = json.loads(out.read_text())
            if keep:
                (keep / f"{name}.json").write_text(out.read_text())
        t_w = float("nan") if args.no_warm else warm_time(path)
        ours, theirs = rows_of(doc), rows_of(ref)
        dll = (doc["fits"]["Global MG94xREV"]["Log Likelihood"]
               - ref["fits"]["Global MG94xREV"]["Log Likelihood"])  # fmt: skip
        d = ours[:, 3] - theirs[:, 3]
        var = ~(theirs[:, :4] == 0).all(1)
        (pp, nn), (hp, hn) = classes(ours), classes(theirs)
        diffs = [f"{i + 1}:{'pos' if pp[i] else 'neg' if nn[i] else '-'}"
                 f"(HyPhy {'pos' if hp[i] else 'neg' if hn[i] else '-'}, ΔLRT {d[i]:+.3f})"
                 for i in np.flatnonzero((pp != hp) | (nn != hn))]  # fmt: skip
        taxa = ref["input"]["number of sequences"]
        print(f"| {name} | {taxa} x {len(theirs)} | {t_h:.1f} | {t_p:.1f} | {t_c:.1f} | "
              f"{t_w:.1f} | {t_h / t_p:.2f} | {t_h / t_c:.2f} | {t_h / t_w:.2f} | "
              f"{m_p:.0f} / {m_h:.0f} | {dll:+.4f} | "
              f"{d[var].min():+.4f} | {np.abs(d).max():.4f} / {np.median(np.abs(d[var])):.1e} | "
              f"{'; '.join(diffs) or 'none'} |", flush=True)  # fmt: skip
    if args.variants or args.variant:
        variants(keep, run_hyphy=not args.hyphy_timings, names=args.variant)


VARIANTS = {
    "srvNo": ["--srv", "No"],
    "branchesInternal": ["--branches", "Internal"],
    "branchesGROUP1": ["--tree", str(SHARED / "CD2.annotated.nwk"), "--branches", "GROUP1"],
    "ciYes": ["--ci"],
    "resample20": ["--resample", "20", "--seed", "1"],
    "branchesInternal.ciYes": ["--branches", "Internal", "--ci"],
}
# HyPhy's JSONs kept in the repository (not in ../shared): `hyphy-avx CPU=1 fel --alignment CD2.nex
# --branches Internal --ci Yes --output CD2.branchesInternal.ciYes.FEL.json` (HyPhy 2.5.47, 92 s)
LOCAL_REFERENCE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "hyphy" / "reference"


# variants HyPhy is also timed on, in the same run (the two that do not take the default site path)
HYPHY_VARIANTS = {"srvNo": ["--srv", "No"], "branchesInternal": ["--branches", "Internal"],
                  "branchesInternal.ciYes": ["--branches", "Internal", "--ci", "Yes"]}


def variants(keep, run_hyphy: bool = True, names=None) -> None:
    """CD2 option variants vs HyPhy's JSONs (phylojax in a fresh process each, with an empty
    compilation cache; HyPhy ``CPU=1`` beside it for ``HYPHY_VARIANTS``)."""
    print("\n| CD2 variant | phylojax s | HyPhy s | ratio | peak MiB | ΔlnL global | min / median ΔLRT |"
          " class diffs | notes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, opts in VARIANTS.items():
        if names and name not in names:
            continue
        ref_path = SHARED / "reference" / f"CD2.{name}.FEL.json"
        if not ref_path.exists():
            ref_path = LOCAL_REFERENCE / f"CD2.{name}.FEL.json"
        ref = json.loads(ref_path.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "p.json"
            t_h = float("nan")
            if run_hyphy and name in HYPHY_VARIANTS:
                t_h, _, _ = timed([HYPHY, "CPU=1", "fel", "--alignment", str(SHARED / "CD2.nex"),
                                   *HYPHY_VARIANTS[name], "--output", f"{tmp}/h.json"])  # fmt: skip
            t_p, m_p, _ = timed([sys.executable, "-m", "phylojax", "fel", "--alignment",
                                 str(SHARED / "CD2.nex"), "--output", str(out), "--quiet", *opts],
                                {"PHYLOJAX_CACHE_DIR": f"{tmp}/xla"})  # fmt: skip
            doc = json.loads(out.read_text())
            if keep:
                (keep / f"CD2.{name}.json").write_text(out.read_text())
        ours, theirs = rows_of(doc), rows_of(ref)
        dll = (doc["fits"]["Global MG94xREV"]["Log Likelihood"]
               - ref["fits"]["Global MG94xREV"]["Log Likelihood"])  # fmt: skip
        d = ours[:, 3] - theirs[:, 3]
        var = ~(theirs[:, :4] == 0).all(1)
        (pp, nn), (hp, hn) = classes(ours), classes(theirs)
        ndiff = int(np.sum((pp != hp) | (nn != hn)))
        note = ""
        if name == "branchesInternal.ciYes":
            inside = (ours[var, 6] <= theirs[var, 6] * 1.02 + 1e-3) & (ours[var, 8] >= theirs[var, 8] * 0.98 - 1e-3)
            zero = var & (theirs[:, 0] == 0)
            note = (f"profile CI contains HyPhy's at {inside.sum()}/{var.sum()} sites; HyPhy's LB is 0 at "
                    f"{int(np.sum(zero & (theirs[:, 6] == 0)))} of its {int(zero.sum())} alpha = 0 sites "
                    "(not the profile: tests/test_fel.py checks ours with scipy)")
        if name == "ciYes":
            inside = (ours[var, 6] <= theirs[var, 6] * 1.02 + 1e-3) & (ours[var, 8] >= theirs[var, 8] * 0.98 - 1e-3)
            note = f"profile CI contains HyPhy's slice CI at {inside.sum()}/{var.sum()} sites"
        if name == "resample20":
            note = "bootstrap p differs by Monte Carlo noise (20 replicates)"
        if name == "srvNo":
            note = "HyPhy 2.5.47's srv-No null is not nested (negative LRTs); ours is nested"
        print(f"| {name} | {t_p:.1f} | {t_h:.1f} | {t_h / t_p:.2f} | {m_p:.0f} | {dll:+.4f} | {d[var].min():+.4f} / "
              f"{np.median(np.abs(d[var])):.1e} | {ndiff} | {note} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
