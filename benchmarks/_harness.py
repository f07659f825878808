"""Shared machinery of the workload scripts: one fresh process per library, tables, targets.

A workload script (``gmm.py``, ``bernoulli.py``, ...) describes

* ``Workload`` s: a title, a configuration, the libraries to run and targets to check;
* ``prepare(cfg) -> dict`` of NumPy arrays (the seeded data and the common starting parameters);
* runners ``run(arrays, cfg) -> Timing`` per library, each fitting for exactly ``cfg["iters"]``
  EM iterations with early stopping disabled in that library's own way;
* ``loglik(arrays, params, cfg) -> [R]`` the final mean log-likelihood of fitted parameters, computed
  the same way (NumPy, float64) for every library, so a fast wrong answer shows.

The parent prepares the arrays once and saves them; each library then runs in a fresh subprocess
(``python <script> --_worker LIB ...``) that loads them, so its peak RSS (``ru_maxrss``: interpreter,
the library's imports, the data and the fit) is its own. The parent prints one Markdown table per
workload and a line per target, with every ratio taken from this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Timing:
    """What a runner measured.

    Attributes:
        fit_s: seconds of the timed fit (``iters`` EM iterations, warm-up and compilation excluded).
        iters: EM iterations in that time (summed over restarts for restart rows).
        warmup_s: compile time (jax libraries, compiled ahead of time) or the time of a one-
            iteration warm-up fit (eager libraries); ``None`` when there is none.
        params: fitted parameters as NumPy arrays, with a leading restart axis ``[R, ...]``; empty
            for rows that fit nothing (the ``limit`` row).
        note: how the row was run, shown in the table.
    """

    fit_s: float
    iters: int
    warmup_s: float | None = None
    params: dict = dataclasses.field(default_factory=dict)
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
    """A check ``value <op> bound`` where ``value = metric(num) / metric(den)``.

    ``num``/``den`` name rows as ``"library"`` (this workload) or ``"workload:library"``; the metric
    is ``"s/iter"`` or ``"peak MB"``. E.g. ``Target("≥ 5× scikit-learn", "sklearn", "jaxem", ">=", 5)``.

    ``paired``: the verdict uses both rows timed in one more worker process, alternating
    ``PAIRED_ROUNDS`` fits of each (see :func:`_paired_timings`); for two rows of this workload
    whose ratio sits near its bound, where load that drifts between their two processes would
    otherwise decide it. The line prints the rows' own ratio beside it.
    """

    text: str
    num: str
    den: str
    op: str
    bound: float
    metric: str = "s/iter"
    paired: bool = False


@dataclasses.dataclass
class Workload:
    """One table: ``cfg`` (with ``iters``) and ``quick`` overrides for ``--quick``; ``title`` is a
    format string over ``cfg``."""

    name: str
    title: str
    cfg: dict
    libraries: tuple[str, ...]
    targets: tuple[Target, ...] = ()
    quick: dict = dataclasses.field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    ``VmHWM`` from ``/proc/self/status``: it starts afresh at ``exec``. ``ru_maxrss`` does not: on
    Linux a worker forked from the parent inherits the parent's peak (1 GB after preparing the
    Bernoulli data), so it is only the fallback where ``/proc`` is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def timed(fn: Callable, *args, **kwargs):
    """``(seconds, fn(*args, **kwargs))``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def machine_line() -> str:
    """CPU model, logical cores and the 1/5/15-minute load averages (noisy above ~2.5 here)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} logical cores, load average {load}"


# ------------------------------------------------------------------------------------- worker side

# Every library gets the same rule: the best of up to REPEATS timed fits, a new one started only
# while its worker has spent under REPEAT_BUDGET_S on them (a run of a slow peer is not repeated).
# One timing per library let a burst of load on these shared machines move a ratio by 2x.
REPEATS, REPEAT_BUDGET_S = 3, 20.0


def _best_timing(runner: Callable, arrays: dict, cfg: dict) -> Timing:
    """The runner's fastest of its repeated fits; compile or warm-up time from the first."""
    start = time.perf_counter()
    first = best = runner(arrays, cfg)
    for _ in range(REPEATS - 1):
        if time.perf_counter() - start >= REPEAT_BUDGET_S:
            break
        again = runner(arrays, cfg)
        if again.fit_s < best.fit_s:
            best = again
    return dataclasses.replace(best, warmup_s=first.warmup_s)


# Fits of each row in a paired worker, alternating, after one warm-up (compiling) fit of each.
PAIRED_ROUNDS = 8


def _paired_timings(runners: dict, names: tuple[str, str], arrays: dict, cfg: dict) -> dict:
    """``{name: fastest s/iter}`` of two rows timed in this one process, alternating.

    Two worker processes run a minute or more apart, and on these shared machines the load
    between them moves a ratio by 10-30%; fits taken in turn see the same load, so the fastest of
    each measures the code rather than the moment.
    """
    for name in names:
        runners[name](arrays, cfg)
    best = dict.fromkeys(names, float("inf"))
    for _ in range(PAIRED_ROUNDS):
        for name in names:
            timing = runners[name](arrays, cfg)
            best[name] = min(best[name], timing.fit_s / timing.iters)
    return best


def _worker(args, runners) -> None:
    directory = Path(args._dir)
    cfg = json.loads((directory / "cfg.json").read_text())
    with np.load(directory / "data.npz") as f:
        arrays = {name: f[name] for name in f.files}
    if args._pair:
        best = _paired_timings(runners, tuple(args._pair), arrays, cfg)
        (directory / _pair_file(args._pair)).write_text(json.dumps(best))
        return
    result = {"library": args._worker}
    try:
        timing = _best_timing(runners[args._worker], arrays, cfg)
    except ImportError as err:
        result.update(status="skipped", note=f"not installed ({err})")
    except Exception as err:  # a broken adapter is reported, never replaced by a number
        traceback.print_exc()
        result.update(status="failed", note=f"{type(err).__name__}: {err}"[:200])
    else:
        result.update(status="ok", fit_s=timing.fit_s, iters=timing.iters,
                      warmup_s=timing.warmup_s, note=timing.note)
        np.savez(directory / f"{args._worker}.params.npz", **timing.params)
    result["peak_mb"] = peak_rss_mb()
    (directory / f"{args._worker}.json").write_text(json.dumps(result))


def _pair_file(names) -> str:
    return "pair-" + "-vs-".join(name.replace(" ", "_") for name in names) + ".json"


def _run_worker(script: str, library: str, directory: Path, timeout: float,
                pair: tuple[str, str] | None = None):
    """The worker process's ``CompletedProcess``, or ``None`` when it timed out."""
    env = dict(os.environ)
    # Cold compilations in the tables: the persistent cache is measured by compile.py.
    env["JAXEM_COMPILATION_CACHE"] = "0"
    cmd = [sys.executable, script, "--_worker", library, "--_dir", str(directory)]
    if pair:
        cmd += ["--_pair", *pair]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _spawn_pair(script: str, pair: tuple[str, str], directory: Path, timeout: float) -> dict | None:
    """``{name: fastest s/iter}`` from a paired worker (see :func:`_paired_timings`), or ``None``."""
    _run_worker(script, "pair", directory, 2 * timeout, pair)
    out = directory / _pair_file(pair)
    return json.loads(out.read_text()) if out.exists() else None


def _spawn(script: str, library: str, directory: Path, timeout: float) -> dict:
    proc = _run_worker(script, library, directory, timeout)
    if proc is None:
        return {"library": library, "status": "failed", "note": f"timed out after {timeout:.0f} s"}
    out = directory / f"{library}.json"
    if not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"library": library, "status": "failed", "note": f"exit {proc.returncode}: {tail[0]}"}
    result = json.loads(out.read_text())
    params = directory / f"{library}.params.npz"
    if result["status"] == "ok" and params.exists():
        with np.load(params) as f:
            result["params"] = {name: f[name] for name in f.files}
    return result


# ------------------------------------------------------------------------------------- parent side

def _metric(row: dict, metric: str) -> float | None:
    if row.get("status") != "ok":
        return None
    return row["s_per_iter"] if metric == "s/iter" else row["peak_mb"]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run_workload(script: str, workload: Workload, cfg: dict, prepare, loglik, libraries,
                 timeout: float) -> tuple[list[dict], dict]:
    """Prepare the arrays, run each library in its own process, add log-likelihoods and ratios.

    Returns ``(rows, paired)``: ``paired[(num, den)]`` holds the paired timings of each paired
    target whose two rows both ran (see :func:`_paired_timings`).
    """
    rows, paired = [], {}
    with tempfile.TemporaryDirectory(prefix=f"jaxem-bench-{workload.name}-") as tmp:
        directory = Path(tmp)
        arrays = prepare(cfg)
        np.savez(directory / "data.npz", **arrays)
        (directory / "cfg.json").write_text(json.dumps(cfg))
        for library in libraries:
            row = _spawn(script, library, directory, timeout)
            if row["status"] == "ok":
                row["s_per_iter"] = row["fit_s"] / row["iters"]
                row["loglik"] = (np.asarray(loglik(arrays, row.pop("params"), cfg))
                                 if row.get("params") else None)
            rows.append(row)
        ref = next((r for r in rows if r["library"] == "jaxem" and r["status"] == "ok"), None)
        for row in rows:
            row["vs_jaxem"] = (row["s_per_iter"] / ref["s_per_iter"]
                               if ref and row["status"] == "ok" else None)
            row["rel_diff"] = None
            if ref is None or row is ref or row.get("loglik") is None:
                continue
            short = row["iters"] // len(row["loglik"])   # iterations per restart of this row
            other = ref
            if short < cfg["iters"]:
                # A peer cut to fewer iterations for time is compared with jaxem after as many.
                other = _jaxem_at(script, directory, cfg, short, loglik, arrays, timeout)
            if other.get("loglik") is not None and row["loglik"].shape == other["loglik"].shape:
                row["rel_diff"] = float(np.max(np.abs(row["loglik"] - other["loglik"])
                                               / np.abs(other["loglik"])))
        ran = {r["library"] for r in rows if r["status"] == "ok"}
        for t in workload.targets:
            if t.paired and {t.num, t.den} <= ran:
                paired[(t.num, t.den)] = _spawn_pair(script, (t.num, t.den), directory, timeout)
    return rows, paired


def _jaxem_at(script: str, directory: Path, cfg: dict, iters: int, loglik, arrays,
              timeout: float) -> dict:
    """jaxem's row after ``iters`` iterations (for comparing a peer that ran only as many)."""
    sub = directory / f"jaxem-{iters}-iterations"
    sub.mkdir(exist_ok=True)
    (sub / "data.npz").symlink_to(directory / "data.npz")
    (sub / "cfg.json").write_text(json.dumps(dict(cfg, iters=iters)))
    row = _spawn(script, "jaxem", sub, timeout)
    if row["status"] == "ok" and row.get("params"):
        row["loglik"] = np.asarray(loglik(arrays, row.pop("params"), cfg))
    return row


def print_table(workload: Workload, cfg: dict, rows: list[dict]) -> None:
    """One Markdown table; skipped and failed libraries are listed under it with the reason."""
    print(f"\n### {workload.title.format(**cfg)}\n")
    print(f"`{json.dumps(cfg, separators=(',', '='))}`\n")
    print("| library | s/iter | vs jaxem | mean loglik | rel. diff vs jaxem | compile / warm-up s "
          "| peak RSS MB | iters | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["status"] != "ok":
            continue
        ll = None if r.get("loglik") is None else float(np.max(r["loglik"]))
        print(f"| {r['library']} | {r['s_per_iter']:.4f} | {_fmt(r['vs_jaxem'], '.2f')} "
              f"| {_fmt(ll, '.5f')} | {_fmt(r['rel_diff'], '.1e')} | {_fmt(r['warmup_s'], '.2f')} "
              f"| {r['peak_mb']:.0f} | {r['iters']} | {r['note']} |")
    for r in rows:
        if r["status"] != "ok":
            print(f"\n{r['library']}: {r['status']}: {r['note']}")


def check_targets(results: dict, name: str, targets, paired: dict | None = None) -> list[dict]:
    """Evaluate and print each target against ``results[workload][library]`` rows; a paired
    target is judged on its timings in ``paired[(num, den)]`` (see :func:`run_workload`)."""
    checks = []
    for t in targets:
        def find(ref):
            wl, lib = ref.split(":") if ":" in ref else (name, ref)
            return results.get(wl, {}).get(lib, {})
        num, den = _metric(find(t.num), t.metric), _metric(find(t.den), t.metric)
        rows_value = value = num / den if num is not None and den else None
        timings = (paired or {}).get((t.num, t.den)) if t.paired else None
        how = ""
        if t.paired and value is not None:
            value = timings[t.num] / timings[t.den] if timings else None
            how = (f" in one process, the fastest of {PAIRED_ROUNDS} alternating fits of each "
                   f"(the rows above: {rows_value:.2f})")
        ok = None if value is None else (value >= t.bound if t.op == ">=" else value <= t.bound)
        missing = "paired worker failed" if rows_value is not None else "row missing"
        verdict = f"n/a ({missing})" if ok is None else ("met" if ok else "MISSED")
        print(f"- target {t.text}: {t.num} / {t.den} {t.metric} = {_fmt(value, '.2f')}{how} "
              f"(needs {t.op} {t.bound:g}): {verdict}")
        checks.append({"target": t.text, "value": value, "ok": ok, "rows_value": rows_value,
                       "paired": timings})
    return checks


def main(script: str, description: str, workloads: list[Workload], prepare, loglik, runners,
         argv=None) -> dict:
    """Command line of a workload script (also its worker entry point)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--json", metavar="PATH", help="also write every row and target as JSON")
    p.add_argument("--workloads", nargs="+", choices=[w.name for w in workloads],
                   help="run only these workloads")
    p.add_argument("--libraries", nargs="+", help="run only these libraries")
    p.add_argument("--timeout", type=float, default=900, help="seconds per library (default 900)")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_dir", help=argparse.SUPPRESS)
    p.add_argument("--_pair", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        _worker(args, runners)
        return {}
    print(f"machine: {machine_line()}")
    results, report = {}, {"machine": machine_line(), "workloads": {}}
    for w in workloads:
        if args.workloads and w.name not in args.workloads:
            continue
        cfg = dict(w.cfg, **(w.quick if args.quick else {}))
        libs = [lib for lib in w.libraries if not args.libraries or lib in args.libraries]
        rows, paired = run_workload(script, w, cfg, prepare, loglik, libs, args.timeout)
        results[w.name] = {r["library"]: r for r in rows}
        print_table(w, cfg, rows)
        print()
        checks = check_targets(results, w.name, w.targets, paired)
        report["workloads"][w.name] = {
            "title": w.title.format(**cfg), "cfg": cfg, "targets": checks,
            "rows": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}
                     for r in rows]}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report
