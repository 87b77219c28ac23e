"""Atomic writes (rerank_ray/io.py), and that the project writes JSON/YAML/Parquet only through them."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from rerank_ray.config import PROJECT_ROOT
from rerank_ray.io import atomic_path, write_json, write_parquet, write_text, write_yaml


def test_writers_round_trip_and_leave_no_temp_file(tmp_path):
    write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    write_yaml(tmp_path / "x.yaml", {"b": 1, "a": 2})
    write_text(tmp_path / "x.txt", "héllo")
    frame = pd.DataFrame({"query_id": ["1", "2"], "score": [0.5, -1.0]})
    write_parquet(tmp_path / "f.parquet", frame)
    write_parquet(tmp_path / "t.parquet", pa.table({"x": [1, 2, 3]}))
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": [1, 2]}
    assert (tmp_path / "x.yaml").read_text() == "b: 1\na: 2\n"  # key order kept
    assert (tmp_path / "x.txt").read_text(encoding="utf-8") == "héllo"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "f.parquet"), frame)
    assert pd.read_parquet(tmp_path / "t.parquet")["x"].tolist() == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() gives


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = write_json(tmp_path / "m.json", {"v": 1})
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_the_temp_file_is_hidden_beside_the_target(tmp_path):
    with atomic_path(tmp_path / "part-00000.parquet") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(
            ".part-00000.parquet."
        )  # Parquet readers skip it
        tmp.write_bytes(b"x")
    assert (tmp_path / "part-00000.parquet").read_bytes() == b"x"


# Direct writes of data files anywhere but rerank_ray/io.py. MLflow's log_text writes no file of
# ours.
DIRECT_WRITE = re.compile(
    r"\.write_(text|bytes)\(|json\.dump\(|\.to_parquet\(|write_table\(|yaml\.(safe_)?dump\("
)
ALLOWED = {
    ("rerank_ray/study/trial.py", "logbook.log_text("),  # an MLflow artifact, not a local file
}


def test_every_json_yaml_and_parquet_write_goes_through_io():
    offenders = []
    for path in sorted((PROJECT_ROOT / "rerank_ray").rglob("*.py")):
        rel = path.relative_to(PROJECT_ROOT).as_posix()
        if rel == "rerank_ray/io.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DIRECT_WRITE.search(line) and not any(rel == f and s in line for f, s in ALLOWED):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert offenders == [], "write these through rerank_ray.io:\n" + "\n".join(offenders)


def test_yaml_dump_helper_is_safe_dump(tmp_path):
    with pytest.raises(yaml.representer.RepresenterError):
        write_yaml(tmp_path / "bad.yaml", {"p": Path("x")})
    assert not (tmp_path / "bad.yaml").exists()
