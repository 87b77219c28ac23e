"""Are a quickstart's results bit-identical to a recorded baseline?

    python bench/quickstart_identical.py record outputs/quickstart docs/results/quickstart-baseline.json
    python bench/quickstart_identical.py check  outputs/quickstart docs/results/quickstart-baseline.json

`record` writes, for every trial, every metric of its ``eval/eval.json`` (full float precision)
and the sha256 of each per-query file; `check` compares a study folder with that file and
prints each difference (exit 1 if any). A restructuring that claims not to change what is
trained or evaluated is checked this way (same config, same seed).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def fingerprint(study_dir: Path) -> dict[str, dict]:
    out = {}
    for trial in sorted(p for p in (study_dir / "trials").iterdir() if p.is_dir()):
        metrics = json.loads((trial / "eval" / "eval.json").read_text())["metrics"]
        files = {
            f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted((trial / "eval").glob("*.per_query.tsv"))
        }
        out[trial.name] = {"metrics": metrics, "per_query_sha256": files}
    return out


def main(argv: list[str]) -> int:
    verb, study_dir, baseline = argv[0], Path(argv[1]), Path(argv[2])
    now = fingerprint(study_dir)
    if verb == "record":
        baseline.write_text(
            json.dumps(now, indent=1, sort_keys=True) + "\n"
        )  # a bench script, not the package
        print(f"recorded {len(now)} trials to {baseline}")
        return 0
    then = json.loads(baseline.read_text())
    diffs = [
        f"{trial}: {key} {then.get(trial, {}).get(key)} != {now.get(trial, {}).get(key)}"
        for trial in sorted(set(then) | set(now))
        for key in ("metrics", "per_query_sha256")
        if then.get(trial, {}).get(key) != now.get(trial, {}).get(key)
    ]
    print("\n".join(diffs) or f"bit-identical: {len(now)} trials, every metric and per-query file")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
