"""A full disk loses nothing that was finished: writes onto a small tmpfs that fills up.

Each test mounts a size-limited tmpfs (root only; skipped with the reason otherwise), fills it
with a filler file, checks that the failed write left no partial file or folder and raised
``DiskFull`` naming the path and the space, then frees space and checks the same call works.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rerank_ray.io import DiskFull, atomic_path, write_json, write_parquet

PAGE = 4096  # tmpfs allocates whole pages


class SmallDisk:
    """A tmpfs mounted at `path`; `fill(leave)` leaves about `leave` bytes free; `resize(size)`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def free(self) -> int:
        return os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize

    def fill(self, leave: int = 0) -> None:
        size = self.free() - leave
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.posix_fallocate(fd, os.fstat(fd).st_size, size)
        finally:
            os.close(fd)
        assert abs(self.free() - leave) <= PAGE

    def unfill(self) -> None:
        self.filler.unlink()

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield SmallDisk(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def hidden(folder: Path) -> list[str]:
    """Temporary files and folders (dot names) anywhere under `folder`."""
    return sorted(p.name for p in folder.rglob(".*"))


def sizes(message: str) -> tuple[str, str]:
    found = re.search(r"\(needed (?:~|more than )([\d.]+ [kMG]?B), ([\d.]+ [kMG]?B) free on (\S+)\)", message)
    assert found, message
    return found.group(1), found.group(3)


# -- io.py --------------------------------------------------------------------------------------


def test_a_parquet_or_json_write_onto_a_full_disk_names_path_and_space_and_keeps_the_old_file(small_disk):
    target = small_disk.path / "scores" / "part-00000.parquet"
    old = pd.DataFrame({"query_id": ["q1"], "doc_id": ["d1"], "score": [1.0]})
    write_parquet(target, old)
    write_json(small_disk.path / "manifest.json", {"v": 1})
    small_disk.fill(leave=8 * 1024)
    rng = np.random.default_rng(0)
    big = pd.DataFrame({"query_id": [f"q{i}" for i in range(20_000)], "score": rng.random(20_000)})

    with pytest.raises(DiskFull) as failed:
        write_parquet(target, big)
    assert failed.value.errno == errno.ENOSPC and failed.value.path == str(target)
    assert str(failed.value).startswith(f"no space left on device writing {target} (needed ~")
    needed, mount = sizes(str(failed.value))
    assert mount == str(small_disk.path) and failed.value.needed > 100_000 and failed.value.free < 20_000
    pd.testing.assert_frame_equal(pd.read_parquet(target), old)  # the previous version, intact

    with pytest.raises(DiskFull, match=re.escape(f"writing {small_disk.path / 'manifest.json'} (needed ~")):
        write_json(small_disk.path / "manifest.json", {"rows": list(range(50_000))})
    assert json.loads((small_disk.path / "manifest.json").read_text()) == {"v": 1}
    assert hidden(small_disk.path) == []

    small_disk.unfill()  # space freed: the same writes succeed
    write_parquet(target, big)
    write_json(small_disk.path / "manifest.json", {"rows": [1]})
    assert len(pd.read_parquet(target)) == 20_000 and hidden(small_disk.path) == []


def test_a_write_whose_size_is_unknown_fails_mid_write_without_a_temp_file(small_disk):
    target = small_disk.path / "run.trec"
    small_disk.fill(leave=64 * 1024)
    with pytest.raises(DiskFull) as failed, atomic_path(target) as tmp, open(tmp, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(16 * 1024))
    assert re.search(r"needed more than [\d.]+ kB, [\d.]+ kB free on ", str(failed.value)), str(failed.value)
    assert not target.exists() and hidden(small_disk.path) == []


def test_disk_full_survives_pickling_as_ray_sends_it_back():
    error = DiskFull("/x/y.parquet", 12_300_000, 400_000, "/x")
    again = pickle.loads(pickle.dumps(error))
    assert (
        str(again)
        == str(error)
        == "no space left on device writing /x/y.parquet (needed ~12.3 MB, 400.0 kB free on /x)"
    )
    assert isinstance(again, OSError) and again.errno == errno.ENOSPC


# -- a saved model ------------------------------------------------------------------------------


def tiny_model(bump: float = 0.0):
    from rerank_ray.models import build_model
    from tests.unit.test_models import TINY

    model = build_model(TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(bump)
    return model


QUERIES, DOCS = ["what is a cat", "dog"], ["a cat is a small animal", "a dog"]


def test_a_model_save_onto_a_full_disk_leaves_no_folder_that_looks_finished(small_disk):
    from rerank_ray.models import load_reranker

    small_disk.resize("7m")  # one tiny model (~4.8 MB) fits, a second copy beside it does not
    first, second = tiny_model(), tiny_model(bump=0.01)
    saved = first.save(small_disk.path / "model")
    first_scores = load_reranker(saved).score(QUERIES, DOCS)

    with pytest.raises(DiskFull) as failed:
        second.save(small_disk.path / "model")  # replacing a finished model
    assert f"writing {small_disk.path / 'model'} (needed ~4." in str(failed.value)  # MB: the weights
    assert load_reranker(saved).score(QUERIES, DOCS) == first_scores  # the old model, whole
    assert hidden(small_disk.path) == []

    with pytest.raises(DiskFull):
        second.save(small_disk.path / "other")  # a new folder
    assert not (small_disk.path / "other").exists() and hidden(small_disk.path) == []

    small_disk.resize("16m")  # space freed: the same call succeeds
    second.save(small_disk.path / "model")
    assert load_reranker(saved).score(QUERIES, DOCS) == second.score(QUERIES, DOCS) != first_scores
    assert hidden(small_disk.path) == []


class FakeCheckpoint:
    """What the driver's export reads from Ray Train's final checkpoint."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def as_directory(self):
        from contextlib import nullcontext

        return nullcontext(str(self.folder))


def test_a_training_export_onto_a_full_disk_keeps_the_finished_run_and_a_rerun_exports(small_disk, tmp_path):
    from rerank_ray.models import load_reranker
    from rerank_ray.train.driver import RECORD, _export

    run_dir = small_disk.path / "run"
    small_disk.resize("7m")
    tiny_model().save(run_dir / "model")  # a finished run: its model (~4.8 MB) and its record
    (run_dir / RECORD).write_text('{"identity": "old"}')
    checkpoint = tmp_path / "checkpoint"
    tiny_model(bump=0.01).save(checkpoint / "hf")
    (checkpoint / "hf" / "extra.bin").write_bytes(os.urandom(3_000_000))  # ~7.8 MB: over 7 MB
    (checkpoint / "history.json").write_text('[{"step": 1}]')

    with pytest.raises(DiskFull, match=re.escape(f"writing {run_dir / 'model'} (needed ~7.8 MB, ")):
        _export(FakeCheckpoint(checkpoint), run_dir)
    assert (run_dir / RECORD).read_text() == '{"identity": "old"}'  # still the old run's, whole
    assert load_reranker(run_dir / "model").score(QUERIES, DOCS) == tiny_model().score(QUERIES, DOCS)
    assert hidden(small_disk.path) == [] and not (run_dir / "history.json").exists()

    small_disk.resize("20m")
    model_dir, history = _export(FakeCheckpoint(checkpoint), run_dir)
    assert (model_dir / "extra.bin").read_bytes() == (checkpoint / "hf" / "extra.bin").read_bytes()
    assert history == [{"step": 1}] and not (run_dir / RECORD).exists()  # train() writes it last
    assert load_reranker(model_dir).score(QUERIES, DOCS) == load_reranker(checkpoint / "hf").score(
        QUERIES, DOCS
    )


# -- teacher score shards -----------------------------------------------------------------------


def test_scoring_onto_a_full_disk_keeps_finished_shards_and_a_rerun_scores_only_the_rest(
    small_disk, tmp_path
):
    from rerank_ray.teacher.config import ScoringConfig, TeacherModel
    from rerank_ray.teacher.score import score_groups
    from tests.unit.test_teacher import groups_frame

    teacher = TeacherModel(kind="cross_encoder", path=str(tiny_model().save(tmp_path / "teacher")))
    groups = tmp_path / "groups.parquet"
    groups_frame().to_parquet(groups)
    scoring = ScoringConfig(actors=1, cpus_per_actor=1, batch_size=2, shard_size=2, pool_min_pairs=100)
    out_dir = small_disk.path / "scores"
    small_disk.fill(leave=2 * PAGE)  # job.json and one shard: one page each

    with pytest.raises(DiskFull, match=re.escape(f"writing {out_dir / 'scores'}/part-")):
        score_groups(groups, teacher, out_dir, scoring=scoring)
    shards = sorted((out_dir / "scores").glob("part-*.parquet"))
    assert len(shards) == 1 and len(pd.read_parquet(shards[0])) == 2  # finished, whole
    assert not (out_dir / "manifest.json").exists() and hidden(small_disk.path) == []

    small_disk.unfill()
    result = score_groups(groups, teacher, out_dir, scoring=scoring)
    assert result.shards_scored == 2 and result.manifest["count"] == 5  # the rest, not the kept shard
    clean = score_groups(groups, teacher, tmp_path / "clean", scoring=scoring)
    pd.testing.assert_frame_equal(pd.read_parquet(result.path), pd.read_parquet(clean.path))


# -- the CLI ------------------------------------------------------------------------------------


def test_the_cli_names_the_path_and_the_space_and_says_a_rerun_reuses_finished_work(
    small_disk, tmp_path, monkeypatch, capsys
):
    from rerank_ray import cli

    target = small_disk.path / "groups" / "groups.parquet"
    small_disk.fill(leave=0)

    def build_groups(cfg, out):
        write_json(target, {"rows": list(range(10_000))})

    import rerank_ray.data.groups

    monkeypatch.setattr(rerank_ray.data.groups, "build_groups", build_groups)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--log-dir", str(tmp_path / "logs"), "prepare"]) == 1
    error, fix, _ = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"rerank-ray prepare: error: no space left on device writing {target} (needed ~")
    assert sizes(error)[1] == str(small_disk.path)
    assert fix.startswith("  fix: free space") and "output_dir" in fix and "finished work is reused" in fix


def test_an_enospc_from_a_library_reads_as_disk_full_with_its_path_and_free_space(small_disk):
    from rerank_ray.console import explain

    path = small_disk.path / "ray" / "checkpoint_000001" / "model.pt"
    small_disk.fill(leave=PAGE)
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        except OSError as inner:
            raise RuntimeError("checkpoint upload failed") from inner
    except RuntimeError as outer:
        ex = explain(outer)
    assert ex.known and isinstance(ex.exc, DiskFull)
    assert (
        ex.error.startswith(f"no space left on device writing {path} (")
        and f"free on {small_disk.path})" in ex.error
    )
    assert "free space" in ex.fix


def test_an_out_of_space_error_known_only_by_its_message_is_the_deepest_one():
    from rerank_ray.console import explain

    class SafetensorError(Exception):  # safetensors' error: the OS message, no errno
        pass

    try:
        try:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        except SafetensorError as inner:
            raise RuntimeError("worker failed: Error while serializing: No space left on device") from inner
    except RuntimeError as outer:
        ex = explain(outer)
    assert (
        ex.known and isinstance(ex.exc, DiskFull) and ex.error.startswith("no space left on device writing")
    )
    assert ex.exc.path == "a file it did not name"  # no path to measure: no free space guessed
    assert explain(RuntimeError("disk on fire")).known is False
