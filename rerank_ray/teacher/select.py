"""Choosing a teacher on held-out training queries (a ``best_of`` teacher, ``study/config.py``).

:func:`choose` evaluates each candidate on the selection suite (``validation``: the training
queries held out of the groups by ``data.validation``; never a test suite, the config refuses
one) and picks the highest headline measure, ties to the first listed. The choice is stored
in ``teachers/<name>/selection.json`` keyed by the content it depends on (each candidate's
fingerprint and settings, the suite, its depth, the data config), so a rerun of an unchanged
study does not evaluate the candidates again. :func:`selection_info` is what the report says.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from rerank_ray import io
from rerank_ray.study.config import BestOfTeacher, StudyConfig
from rerank_ray.study.records import TeacherInfo
from rerank_ray.teacher.config import TeacherModel

log = logging.getLogger(__name__)
SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class Selection:
    """The candidates' scores on the held-out suite and the one chosen."""

    suite: str
    measure: str
    scores: dict[str, float]
    chosen: str
    queries: int
    key: str

    def sentence(self) -> str:
        ranked = ", ".join(f"`{c}` {v:.3f}" for c, v in sorted(self.scores.items(), key=lambda kv: -kv[1]))
        return (
            f"chosen `{self.chosen}` among {len(self.scores)} candidates by {self.measure} on `{self.suite}` "
            f"({self.queries} training queries held out of the groups): {ranked}"
        )


def selection_key(cfg: StudyConfig, spec: BestOfTeacher, models: dict[str, TeacherModel]) -> str:
    """sha256 of what the choice depends on: each candidate's model content and settings, the
    suite, its depth and measure, and the data config (which queries are held out)."""
    from rerank_ray.teacher.provenance import teacher_content

    key = {
        "candidates": {c: teacher_content(m) for c, m in models.items()},
        "suite": spec.suite,
        "depth": spec.depth,
        "measure": cfg.eval.measure,
        "data": cfg.base.data.model_dump(mode="json", exclude={"root"}),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def choose(cfg: StudyConfig, name: str, spec: BestOfTeacher, models: dict[str, TeacherModel]) -> Selection:
    """Evaluate each candidate teacher (a bi-encoder or a cross-encoder) on the selection
    suite, under ``teachers/<name>/selection/<candidate>/``, and choose; reused from
    ``selection.json`` when its key is unchanged."""
    from rerank_ray.study.trial import evaluate_suites

    folder = cfg.study_dir / "teachers" / name
    key = selection_key(cfg, spec, models)
    stored = _stored(folder / SELECTION_FILE)
    if stored is not None and stored.key == key:
        log.info(
            "teacher %s: the choice of %s is unchanged (%s)", name, stored.chosen, folder / SELECTION_FILE
        )
        return stored
    eval_cfg = cfg.eval.model_copy(
        update={
            "in_domain": (spec.suite,),
            "out_of_domain": (),
            "depth": {} if spec.depth is None else {spec.suite: spec.depth},
        }
    )
    scores, queries = {}, 0
    for candidate, model in models.items():
        evaluation = evaluate_suites(
            model,
            eval_cfg,
            folder / "selection" / candidate,
            root=cfg.base.data.root,
            tag=candidate,
            data=cfg.base.data,
        )
        scores[candidate] = evaluation.scores[spec.suite]
        queries = _queries(evaluation.eval_dir, spec.suite)
    chosen = max(scores, key=lambda c: (scores[c], -spec.candidates.index(c)))
    selection = Selection(spec.suite, cfg.eval.measure, scores, chosen, queries, key)
    io.write_json(folder / SELECTION_FILE, asdict(selection))
    return selection


def _queries(eval_dir: Path, suite: str) -> int:
    """Queries evaluated on `suite` (the query ids of its per-query file, one row per measure)."""
    path = eval_dir / f"{suite}.per_query.tsv"
    if not path.is_file():
        return 0
    return len({line.split("\t", 1)[0] for line in path.read_text().splitlines()[1:]})


def _stored(path: Path) -> Selection | None:
    if not path.is_file():
        return None
    try:
        return Selection(**json.loads(path.read_text()))
    except (TypeError, ValueError):
        log.warning("ignoring an unreadable teacher selection %s; choosing again", path)
        return None


def selection_info(cfg: StudyConfig, name: str, spec: BestOfTeacher, diagnostics: dict) -> TeacherInfo:
    """The report's line for best_of teacher `name`: the chosen candidate and every score."""
    selection = _stored(cfg.study_dir / "teachers" / name / SELECTION_FILE)
    if selection is None:
        return TeacherInfo(None, f"the best of {', '.join(spec.candidates)} (not chosen yet)", diagnostics)
    return TeacherInfo(None, f"its chosen candidate `{selection.chosen}`", diagnostics, selection.sentence())
