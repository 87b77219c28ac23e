"""Per-test wall times of chosen tests, each run alone, so that two runs can be compared.

    python bench/suite_times.py tests/integration/test_train.py tests/integration/test_study.py::test_x
    python bench/suite_times.py --lock /tmp/rerank_heavy.lock --json after.json --baseline before.json ...

Every argument is a pytest node id (a file, or ``file::test``); each is its own ``pytest``
process, one after another (holding ``flock(LOCK)`` when ``--lock`` is given, as on a shared
machine), with ``--durations=0``. Prints one row per test phase that took at least 0.5 s
(``call``, ``setup`` of a module or session fixture, ``teardown``) and the process's wall time
(``[process]``: pytest start-up included, waiting for the lock not); with ``--baseline`` (a
``--json`` file of an earlier run) also the earlier seconds and the change.
A test that failed is marked, so a faster broken test never reads as a gain.

Numbers from a machine that other jobs share are not comparable: measure both sides quietly.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

DURATION = re.compile(r"^\s*([\d.]+)s (call|setup|teardown)\s+(\S+)", re.MULTILINE)
OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR) (\S+)", re.MULTILINE)


def time_node(node: str, lock: str | None) -> dict:
    """Run pytest on `node` alone; its phases' seconds, failures, and the process's wall time."""
    cmd = [sys.executable, "-m", "pytest", node, "-q", "-rA", "-p", "no:cacheprovider", "--durations=0"]
    with open(lock or os.devnull, "a") as held:
        if lock:
            fcntl.flock(held, fcntl.LOCK_EX)  # what flock(1) takes; released when the file closes
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - started
    phases = {f"{test} [{phase}]": float(s) for s, phase, test in DURATION.findall(done.stdout)}
    phases[f"{node} [process]"] = wall
    failed = sorted({test for outcome, test in OUTCOME.findall(done.stdout) if outcome != "PASSED"})
    return {"node": node, "wall_s": wall, "rc": done.returncode, "phases": phases, "failed": failed}


def table(runs: list[dict], baseline: dict[str, float]) -> str:
    rows = ["| test [phase] | before (s) | after (s) | change (s) |", "|---|---:|---:|---:|"]
    for run in runs:
        for name, seconds in run["phases"].items():
            if seconds < 0.5 and name not in baseline:
                continue
            mark = " FAILED" if any(name.startswith(f + " ") for f in run["failed"]) else ""
            before = baseline.get(name)
            change = "" if before is None else f"{seconds - before:+.1f}"
            was = "" if before is None else f"{before:.1f}"
            rows.append(f"| {name}{mark} | {was} | {seconds:.1f} | {change} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("nodes", nargs="+", help="pytest node ids, each run in its own process")
    parser.add_argument("--lock", help="run each under `flock LOCK` (a machine shared with other jobs)")
    parser.add_argument("--json", type=Path, help="write the runs here (a later --baseline)")
    parser.add_argument("--baseline", type=Path, help="a --json file of an earlier run to compare with")
    args = parser.parse_args()
    baseline: dict[str, float] = {}
    if args.baseline:
        for run in json.loads(args.baseline.read_text()):
            baseline.update(run["phases"])
    runs = []
    for node in args.nodes:
        runs.append(time_node(node, args.lock))
        print(f"{node}: {runs[-1]['wall_s']:.1f}s, rc {runs[-1]['rc']}", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    print(table(runs, baseline))
    return max(run["rc"] for run in runs)


if __name__ == "__main__":
    raise SystemExit(main())
