"""Run every benchmark script that exists, one after another, and print all their tables.

Scripts (each skipped with a note when absent): ``gmm.py``, ``bernoulli.py``, ``hmm.py``,
``kmeans.py``, ``compile.py``, ``convergence.py``, ``custom.py``, ``mfa.py``, ``out_of_core.py``
(always with ``--quick``: the full size writes gigabytes), ``bootstrap.py``,
``multiprocess.py`` and ``hmm_families.py``. Output streams as
it comes; at the end come the wall time of each script and every target line again. ``--out
FILE`` also saves the whole output (Markdown: it is the README's table section), ``--json DIR``
each script's JSON.

    python benchmarks/run_all.py                 # full sizes, 7-12 minutes on 2 quiet cores
    python benchmarks/run_all.py --quick         # a smoke test of every script
    python benchmarks/run_all.py --out results.md --json results/
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _harness import machine_line

HERE = Path(__file__).resolve().parent
# (script, extra arguments always passed)
SCRIPTS = [("gmm.py", []), ("bernoulli.py", []), ("hmm.py", []), ("kmeans.py", []),
           ("compile.py", []), ("convergence.py", []), ("custom.py", []), ("mfa.py", []),
           ("out_of_core.py", ["--quick"]), ("bootstrap.py", []), ("multiprocess.py", []),
           ("hmm_families.py", [])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every script")
    p.add_argument("--only", nargs="+", metavar="SCRIPT", help="e.g. --only gmm bernoulli")
    p.add_argument("--out", metavar="FILE", help="also write the whole output here")
    p.add_argument("--json", metavar="DIR", help="each script's --json output goes here")
    args = p.parse_args(argv)

    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    emit(f"machine: {machine_line()}; python {sys.version.split()[0]}")
    emit(f"command: python benchmarks/run_all.py {' '.join(argv or sys.argv[1:])}".rstrip())
    timings, failures = [], []
    start_all = time.perf_counter()
    for script, extra in SCRIPTS:
        name = script.removesuffix(".py")
        if args.only and name not in args.only:
            continue
        path = HERE / script
        if not path.exists():
            emit(f"\n## {script}: not present, skipped")
            continue
        cmd = [sys.executable, str(path), *extra]
        if args.quick and "--quick" not in extra:
            cmd.append("--quick")
        if args.json:
            Path(args.json).mkdir(parents=True, exist_ok=True)
            cmd += ["--json", str(Path(args.json) / f"{name}.json")]
        emit(f"\n## {script}\n\n`{' '.join(['python', f'benchmarks/{script}', *cmd[2:]])}`")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=HERE.parent)
        for line in proc.stdout:
            emit(line.rstrip("\n"))
        proc.wait()
        timings.append((script, time.perf_counter() - start, proc.returncode))
        if proc.returncode:
            failures.append(script)

    emit("\n## Summary\n")
    for script, seconds, code in timings:
        emit(f"- {script}: {seconds:.0f} s" + (f" (exit status {code})" if code else ""))
    emit(f"- total: {time.perf_counter() - start_all:.0f} s; load average now "
         f"{machine_line().rsplit('load average ', 1)[1]}")
    targets = [line for line in lines if line.startswith("- target")]
    if targets:
        emit("\nTargets:\n")
        for line in targets:
            emit(line)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
