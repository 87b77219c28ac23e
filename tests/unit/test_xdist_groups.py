"""`make test` runs pytest on 2 xdist workers with ``--dist loadgroup``: tests that share an
expensive session fixture (the bring-your-own study of test_byo.py and test_mlflow_ui.py) carry
``xdist_group`` marks so that one worker builds it once. That only holds with a pytest that
xdist's grouping works with (pytest 9.2 broke it silently: every test ungrouped). This runs a
real 2-worker pytest on tiny tests and checks where they ran."""

from __future__ import annotations

import subprocess
import sys


def test_a_module_marked_with_an_xdist_group_runs_on_one_worker(tmp_path):
    log = tmp_path / "workers.log"
    shared = 'import os, pytest\npytestmark = pytest.mark.xdist_group("g")\n'
    body = "".join(
        f"def test_{i}():\n    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        for i in range(4)
    )
    (tmp_path / "test_grouped_a.py").write_text(shared + body)
    (tmp_path / "test_grouped_b.py").write_text(shared + body)
    (tmp_path / "test_free.py").write_text("".join(f"def test_{i}():\n    pass\n" for i in range(6)))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    workers = log.read_text().split()
    assert len(workers) == 8 and len(set(workers)) == 1, workers
