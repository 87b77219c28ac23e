"""What a training run depends on, by content: the key of every "already trained" reuse.

A run is reused (its ``run.json``, ``train/record.py``: a trained run, a study's trial or teacher) only when
every input below is the same as when it was trained:

- ``config``: sha256 of the RunConfig (``cfg.to_dict()``) without the keys that only say how it
  survives failures (``config.FAULT_TOLERANCE_KEYS``: retries, checkpoint intervals, storage);
- ``groups``: sha256 of the groups Parquet file's bytes (not its path: a regenerated file at the
  same path is a different input);
- ``teacher_scores``: for a loss that needs a teacher, the ``fingerprint`` of the scoring job's
  ``manifest.json`` (``teacher/score.py``: the teacher's weights and the scored pairs), or the
  sha256 of the score files when they carry no manifest; None otherwise;
- ``base_weights``: sha256 of every file of the model source (and of the tokenizer source when it
  differs): weights, config, tokenizer. A hub id that is not a local folder is keyed by its name;
- ``recipe``: :data:`TRAINING_RECIPE`, the version of what the training code does with those
  inputs (LR schedule, optimizer, train/eval mode). A change there that alters what a config
  trains bumps it, so no model trained by the older code is reused (a record written before this
  field existed is never reused either).

Hashes of files of 1 MiB or more are cached per (resolved path, size, mtime_ns) in
``$RERANK_RAY_CACHE`` (default ``~/.cache/rerank_ray``) ``/file_hashes.json``, so a 100 MB
checkpoint is read once, not at every rerun. :meth:`RunIdentity.changes` names the inputs that differ, for the log line that says why a
run trains again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rerank_ray.config import RunConfig, training_config
from rerank_ray.io import write_json
from rerank_ray.teacher import MANIFEST

# Field name -> the words the log uses for it.
INPUTS = {
    "config": "config",
    "groups": "groups",
    "teacher_scores": "teacher scores",
    "base_weights": "base weights",
    "recipe": "training recipe",
}
# Bump (with a line here) when the training code changes what a given config trains:
# 1: dropout on in training (model.train()), DeepSpeed's WarmupDecayLR;
# 2: transformers' linear warmup/decay schedule (WarmupDecayLR ran the first two
#    optimizer steps at lr 0), torch's fused AdamW.
TRAINING_RECIPE = "2"

CACHE_MIN_BYTES = 1 << 20
_memo: dict[str, str] = {}


@dataclass(frozen=True)
class RunIdentity:
    config: str
    groups: str
    teacher_scores: str | None
    base_weights: str
    recipe: str

    @property
    def fingerprint(self) -> str:
        """12 hex digits over every input: names the run's Ray storage, so only an identical run
        resumes from its checkpoints."""
        payload = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def changes(self, stored: RunIdentity) -> list[str]:
        """The inputs (their log words) that differ from `stored`."""
        return [words for key, words in INPUTS.items() if getattr(self, key) != getattr(stored, key)]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RunIdentity | None:
        """None for a record written before identities existed (or by hand): never reused."""
        if not isinstance(data, dict) or not set(INPUTS) <= set(data):
            return None
        return cls(**{key: data[key] for key in INPUTS})


def run_identity(cfg: RunConfig, groups_path: Path) -> RunIdentity:
    """The content identity of training `cfg` on the groups at `groups_path`."""
    config = hashlib.sha256(json.dumps(training_config(cfg.to_dict()), sort_keys=True).encode()).hexdigest()
    teacher = None
    if cfg.loss.needs_teacher and cfg.train.teacher_scores is not None:
        teacher = teacher_scores_fingerprint(Path(cfg.train.teacher_scores))
    return RunIdentity(
        config=config,
        groups=file_sha256(Path(groups_path)),
        teacher_scores=teacher,
        base_weights=source_fingerprint(cfg.model.source, cfg.model.tokenizer),
        recipe=TRAINING_RECIPE,
    )


def teacher_scores_fingerprint(path: Path) -> str:
    """The scoring manifest's fingerprint (teacher + pairs), else a hash of the score files.

    `path` is what ``train.teacher_scores`` takes: a Parquet file, or ``score_groups``'s
    ``scores/`` folder, whose ``manifest.json`` sits beside it."""
    manifest = path.parent / MANIFEST
    if path.is_dir() and manifest.is_file():
        fingerprint = json.loads(manifest.read_text()).get("fingerprint")
        if fingerprint:
            return f"manifest:{fingerprint}"
    if not path.exists():
        raise FileNotFoundError(f"train.teacher_scores={path} does not exist")
    return f"files:{folder_sha256(path) if path.is_dir() else file_sha256(path)}"


def source_fingerprint(source: str, tokenizer: str | None = None) -> str:
    """sha256 of the model source's files (and the tokenizer source's, when it is another)."""
    from rerank_ray.models.sources import resolve_gguf, resolve_source

    h = hashlib.sha256()
    for name in dict.fromkeys([source, tokenizer or source]):
        gguf = resolve_gguf(name)
        folder = Path(gguf[0]) if gguf else Path(resolve_source(name))
        h.update(folder_sha256(folder).encode() if folder.is_dir() else f"hub:{name}".encode())
    return h.hexdigest()


def folder_sha256(folder: Path) -> str:
    """sha256 over (relative path, file hash) of every non-hidden file under `folder`, sorted."""
    h = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and "__pycache__" not in p.parts
    )
    for path in files:
        h.update(f"{path.relative_to(folder)}\t{file_sha256(path)}\n".encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of `path`'s bytes; for files of CACHE_MIN_BYTES or more, cached per (resolved path,
    size, mtime_ns). Smaller files are always read: they are cheap, and a rewrite within one
    mtime tick that keeps the size would otherwise return a stale hash."""
    path = Path(path).resolve()
    stat = path.stat()
    if stat.st_size < CACHE_MIN_BYTES:
        return _sha256(path)
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in _memo:
        cache = _read_cache()
        if key not in cache:
            # Entries of an older version of this file are stale: drop them.
            cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|")}
            cache[key] = _sha256(path)
            _write_cache(cache)
        _memo[key] = cache[key]
    return _memo[key]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_file() -> Path:
    root = os.environ.get("RERANK_RAY_CACHE") or Path.home() / ".cache" / "rerank_ray"
    return Path(root) / "file_hashes.json"


def _read_cache() -> dict[str, str]:
    path = _cache_file()
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        # A missing or half-written cache only costs a rehash.
        return {}


def _write_cache(cache: dict[str, str]) -> None:
    path = _cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Concurrent trials may race here; each write is whole (rename), the loser's entries are rehashed.
    write_json(path, cache, indent=None)
