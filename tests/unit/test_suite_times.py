"""bench/suite_times.py on a real pytest run of two tiny tests: phases parsed, failures marked."""

from __future__ import annotations

from bench.suite_times import table, time_node


def test_phases_and_failures_are_read_from_a_real_pytest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pytest's rootdir, so node ids are test_tiny.py::...
    tests = tmp_path / "test_tiny.py"
    tests.write_text(
        "import time\n"
        "def test_slow():\n    time.sleep(0.6)\n"
        "def test_broken():\n    time.sleep(0.6)\n    assert False\n"
    )
    run = time_node("test_tiny.py", lock=None)
    slow, broken = (f"test_tiny.py::test_{name} [call]" for name in ("slow", "broken"))
    assert run["rc"] == 1 and run["failed"] == ["test_tiny.py::test_broken"]
    assert 0.6 <= run["phases"][slow] < 5 and 0.6 <= run["phases"][broken] < 5
    assert run["phases"]["test_tiny.py [process]"] >= run["phases"][slow] + run["phases"][broken]

    rows = table([run], baseline={slow: 2.0}).splitlines()
    assert f"| {slow} | 2.0 | {run['phases'][slow]:.1f} | {run['phases'][slow] - 2.0:+.1f} |" in rows
    assert any(row.startswith(f"| {broken} FAILED |") for row in rows)
