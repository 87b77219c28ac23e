"""Open a retrieval collection: a local BEIR-like folder or an ir_datasets id, through one reader.

``open_collection(name, root=..., split=..., first_stage=...)`` returns a :class:`Collection`.

- ``name`` naming a folder under ``root`` (layout in ``data/README.md``: ``corpus.jsonl``,
  ``queries.jsonl``, ``qrels/<split>.tsv``, ``<first_stage>.<split>.run``) registers that folder
  with ir_datasets as ``rerank-ray/<folder>/<split>`` (docs, queries, qrels) and
  ``rerank-ray/<folder>/<split>/<first_stage>`` (the same plus the run as scoreddocs), then reads
  the latter like any other ir_datasets dataset.
- Any other ``name`` is an ir_datasets id (``msmarco-passage/trec-dl-2019/judged``); the id
  already fixes the split and its scoreddocs are the first stage, so ``split`` and
  ``first_stage`` do not apply to it.

What a :class:`Collection` holds (all ids are ``str``):

- ``queries``: ``{query_id: text}``. For a local folder, only the queries of ``split`` (those in
  its qrels or its run), as BEIR's ``queries.jsonl`` lists every split's queries.
- ``qrels``: ``{query_id: {doc_id: label}}``, graded integer labels, **all** judgments (also for
  documents outside the corpus: they count in the ideal DCG).
- ``run``: ``{query_id: [(doc_id, score), ...]}``, the first-stage run in rank order (score
  descending; ties keep file order), each document once per query (``duplicates``: a repeated
  entry is dropped and counted in ``run_duplicates``, or refused). An empty run is an error.
- ``queries_without_text``: judged or retrieved query ids that have no query text.
- ``doc_text(doc_id)``: ``title + " " + text``, the title omitted when empty.
- ``docs_store``: the ir_datasets docstore. For local folders it is built once per corpus file
  version under ``$IR_DATASETS_HOME/rerank-ray/docstores`` (never beside the shared data) and
  reused by every later process.

The readers of the folder's files are in ``formats.py``: malformed input raises
:class:`DataError` naming the file and the 1-based line number, and a UTF-8 byte order mark
never turns into a phantom id.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ir_datasets
from ir_datasets.util import LocalDownload

from rerank_ray.config import default_data_root
from rerank_ray.data.formats import (
    NAMESPACE,
    BeirJsonlDocs,
    BeirJsonlQueries,
    BeirTsvQrels,
    DataError,
    RunLine,
    TrecRunScoredDocs,
)

log = logging.getLogger("rerank_ray.data")

DUPLICATE_POLICIES = ("dedupe", "error")


# ---------------------------------------------------------------------------------------------
# Registration: local folder -> ir_datasets ids.

_REGISTERED: dict[str, Path] = {}  # ir_datasets id -> the folder it reads


def _register(dataset_id: str, folder: Path, *constituents: Any) -> None:
    known = _REGISTERED.get(dataset_id)
    if known == folder:
        return
    if known is not None:
        raise DataError(
            f"ir_datasets id {dataset_id!r} already reads {known}; cannot also register {folder} "
            "in this process (give the folder another name)"
        )
    ir_datasets.registry.register(dataset_id, ir_datasets.Dataset(*constituents))
    _REGISTERED[dataset_id] = folder


def register_local(folder: Path, name: str, split: str, first_stage: str) -> str:
    """Register a BEIR-like folder with ir_datasets and return the id that includes the run."""
    files = {
        "corpus": folder / "corpus.jsonl",
        "queries": folder / "queries.jsonl",
        "qrels": folder / "qrels" / f"{split}.tsv",
        "run": folder / f"{first_stage}.{split}.run",
    }
    for kind, path in files.items():
        if not path.is_file():
            hint = ""
            if kind == "qrels":
                hint = f"; splits here: {sorted(p.stem for p in (folder / 'qrels').glob('*.tsv'))}"
            elif kind == "run":
                hint = f"; runs here: {sorted(p.name for p in folder.glob('*.run'))}"
            raise DataError(f"{name}: missing {kind} file {path}{hint}")
    base_id = f"{NAMESPACE}/{name}/{split}"
    run_id = f"{base_id}/{first_stage}"
    namespace = f"{NAMESPACE}/{name}"
    docs = BeirJsonlDocs(LocalDownload(files["corpus"], mkdir=False), namespace)
    qrels = BeirTsvQrels(LocalDownload(files["qrels"], mkdir=False))
    scoreddocs = TrecRunScoredDocs(LocalDownload(files["run"], mkdir=False))
    queries_dlc = LocalDownload(files["queries"], mkdir=False)

    def split_ids() -> set[str]:
        return {q.query_id for q in qrels.qrels_iter()}

    def split_and_run_ids() -> set[str]:
        return split_ids() | {s.query_id for s in scoreddocs.scoreddocs_iter()}

    _register(base_id, folder, docs, BeirJsonlQueries(queries_dlc, namespace, split_ids), qrels)
    _register(
        run_id, folder, docs, BeirJsonlQueries(queries_dlc, namespace, split_and_run_ids), qrels, scoreddocs
    )
    return run_id


def resolve_dataset_id(name: str, *, root: Path | str | None, split: str, first_stage: str) -> str:
    """The ir_datasets id that `name` reads: a local folder is registered first."""
    folder = Path(root) / name if root is not None else None
    if folder is not None and folder.is_dir():
        return register_local(folder.resolve(), name, split, first_stage)
    try:
        ir_datasets.registry[name]
    except KeyError:
        local = (
            sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if root and Path(root).is_dir() else []
        )
        raise DataError(
            f"dataset {name!r} is neither a folder under data root {root} (folders there: {local}) "
            "nor an ir_datasets id (see https://ir-datasets.com, e.g. 'msmarco-passage/trec-dl-2019/judged')"
        ) from None
    return name


# ---------------------------------------------------------------------------------------------
# Collection


class Collection:
    """Queries, qrels, first-stage run and documents of one dataset split (see module docstring).

    Parts load on first access and are then kept, so opening a collection is cheap."""

    def __init__(
        self, name: str, dataset_id: str, run_file: Path | None = None, duplicates: str = "dedupe"
    ) -> None:
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
        self.name = name
        self.dataset_id = dataset_id
        # A TREC run read instead of the dataset's scoreddocs (ids without one, such as BEIR).
        self.run_file = run_file
        # What a (query_id, doc_id) pair that the run lists twice does: see `run`.
        self.duplicates = duplicates

    def __repr__(self) -> str:
        return (
            f"Collection(name={self.name!r}, dataset_id={self.dataset_id!r}, run_file={self.run_file!r}, "
            f"duplicates={self.duplicates!r})"
        )

    @functools.cached_property
    def dataset(self) -> Any:
        return ir_datasets.load(self.dataset_id)

    @functools.cached_property
    def queries(self) -> dict[str, str]:
        with self._fetching("queries"):
            return {q.query_id: q.default_text() for q in self.dataset.queries_iter()}

    @functools.cached_property
    def qrels(self) -> dict[str, dict[str, int]]:
        """{query_id: {doc_id: label}}. A pair judged twice with different labels is refused
        (a local qrels file is refused with its line, ``data/formats.py``); an exact repeat is
        dropped and counted in a warning."""
        out: dict[str, dict[str, int]] = {}
        repeats = 0
        with self._fetching("qrels"):
            for qrel in self.dataset.qrels_iter():
                labels, label = out.setdefault(qrel.query_id, {}), int(qrel.relevance)
                if qrel.doc_id not in labels:
                    labels[qrel.doc_id] = label
                elif labels[qrel.doc_id] == label:
                    repeats += 1
                else:
                    raise DataError(
                        f"{self.dataset_id}: query {qrel.query_id!r} document {qrel.doc_id!r} is judged "
                        f"{label} and {labels[qrel.doc_id]}; keep one judgment per (query, document) "
                        "pair: evaluate a corrected local copy (a BEIR-style folder) instead"
                    )
        if repeats:
            log.warning("%s: dropped %d judgment(s) repeated with the same label", self.dataset_id, repeats)
        return out

    @property
    def run(self) -> dict[str, list[tuple[str, float]]]:
        """The first-stage run in rank order (score descending, ties in file order), each document
        once per query: with ``duplicates="dedupe"`` a repeated (query_id, doc_id) keeps its
        best-ranked entry and the others are dropped (counted in :attr:`run_duplicates`, and
        logged); with ``"error"`` a repeat raises :class:`DataError`. An empty run is an error."""
        return self._run[0]

    @property
    def run_duplicates(self) -> int:
        """How many run entries were dropped as repeats of a (query_id, doc_id) ranked higher."""
        return self._run[1]

    @functools.cached_property
    def _run(self) -> tuple[dict[str, list[tuple[str, float]]], int]:
        if self.run_file is not None:
            source = str(self.run_file)
            scoreddocs = TrecRunScoredDocs(LocalDownload(self.run_file, mkdir=False)).scoreddocs_iter()
        elif self.dataset.has_scoreddocs():
            local = self.dataset_id in _REGISTERED
            source = str(self.dataset.scoreddocs_path()) if local else f"{self.dataset_id} (scoreddocs)"
            with self._fetching("scoreddocs"):
                scoreddocs = list(self.dataset.scoreddocs_iter())
        else:
            raise DataError(
                f"{self.dataset_id} has no first-stage run (scoreddocs) to rerank or sample from; "
                "give one as a TREC run file (a suite's run_file, or a study's eval.run_files)"
            )
        entries: dict[str, list[tuple[str, float, str]]] = {}
        for number, sd in enumerate(scoreddocs, start=1):
            where = f"{source}:{sd.line}" if isinstance(sd, RunLine) else f"{source} entry {number}"
            entries.setdefault(sd.query_id, []).append((sd.doc_id, float(sd.score), where))
        if not entries:
            raise DataError(
                f"{source}: the first-stage run has no entries; write the candidates to rerank there"
            )
        run: dict[str, list[tuple[str, float]]] = {}
        dropped: list[str] = []
        for query_id, ranked in entries.items():
            ranked.sort(key=lambda entry: -entry[1])  # stable: ties keep file order
            kept: dict[str, float] = {}
            for doc_id, score, where in ranked:
                if doc_id not in kept:
                    kept[doc_id] = score
                    continue
                if self.duplicates == "error":
                    raise DataError(
                        f"{where}: {query_id} {doc_id} is listed twice in the first-stage run; list each "
                        "document once per query, or set data.duplicate_run_entries=dedupe to keep the "
                        "best-ranked entry"
                    )
                dropped.append(f"{where} ({query_id} {doc_id})")
            run[query_id] = list(kept.items())
        if dropped:
            log.warning(
                "%s: dropped %d repeated (query_id, doc_id) run entries, keeping each pair's best-ranked "
                "entry (data.duplicate_run_entries=dedupe), e.g. %s",
                self.name, len(dropped), dropped[:3],
            )  # fmt: skip
        return run, len(dropped)

    @property
    def queries_without_text(self) -> list[str]:
        """Ids of judged or retrieved queries that ``queries.jsonl`` (the queries) gives no text."""
        ids = dict.fromkeys([*self.qrels, *self.run])
        return [query_id for query_id in ids if query_id not in self.queries]

    @functools.cached_property
    def docs_store(self) -> Any:
        with self._fetching("docs"):
            return built_once(self.dataset.docs_store())

    @contextlib.contextmanager
    def _fetching(self, part: str) -> Iterator[None]:
        """ir_datasets downloads a missing part on first read; offline that is an OSError
        (requests' ConnectionError), turned into a DataError that says how to get the data."""
        try:
            yield
        except OSError as e:
            if self.dataset_id.startswith(f"{NAMESPACE}/"):
                raise
            home = ir_datasets.util.home_path()
            raise DataError(
                f"{self.name}: ir_datasets id {self.dataset_id!r} ({part}) is not downloaded under "
                f"{home} and could not be fetched ({type(e).__name__}: {str(e)[:160]}). On a machine "
                f"with internet run `ir_datasets export {self.dataset_id} {part} > /dev/null` (and the "
                f"same for docs, queries and qrels), then copy {home} here or point $IR_DATASETS_HOME "
                "at a copy; see https://ir-datasets.com"
            ) from e

    def doc_text(self, doc_id: str) -> str:
        return self.doc_texts([doc_id])[0]

    def doc_texts(self, doc_ids: list[str]) -> list[str]:
        """Texts of many documents (one docstore lookup), in the order given."""
        with self._fetching("docs"):  # the store downloads and builds itself on first use
            found = self.docs_store.get_many(doc_ids)
        missing = [d for d in doc_ids if d not in found]
        if missing:
            raise DataError(
                f"{self.name}: {len(missing)} document(s) not in the corpus, e.g. {missing[:5]}; "
                "the first-stage run and the corpus do not match"
            )
        return [found[d].default_text() for d in doc_ids]


def built_once(store: Any) -> Any:
    """`store`, built (when it builds itself on first use, as ir_datasets' docstores do) under an
    exclusive lock on ``<store path>.lock``. ir_datasets checks whether a store is built before
    taking any lock, so two processes opening a new corpus at once (Ray workers on one node,
    parallel test workers) would both fill it; here the second waits, then finds it built."""
    path, build = getattr(store, "path", None), getattr(store, "build", None)
    if path is None or build is None:
        return store
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        build()  # a no-op once built
    return store


_OPEN: dict[tuple[Any, ...], Collection] = {}


def _signature(dataset_id: str) -> tuple[Any, ...]:
    folder = _REGISTERED.get(dataset_id)
    if folder is None:
        return ()
    return tuple(
        (str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()
    )


def open_collection(
    name: str,
    *,
    root: Path | str | None = None,
    split: str = "test",
    first_stage: str = "bm25-top100",
    run_file: Path | str | None = None,
    duplicates: str = "dedupe",
) -> Collection:
    """The collection `name` (a folder under `root`, default the configured data root, or an
    ir_datasets id). The same arguments give the same object while the files are unchanged,
    so parsed queries, qrels and run are shared within a process.

    `run_file` (a TREC run; relative paths are under `root`) replaces the first-stage run; an
    ir_datasets id without scoreddocs (BEIR) needs one to be reranked. `duplicates` says what a
    run entry repeating a (query_id, doc_id) pair does (``data.duplicate_run_entries``):
    ``"dedupe"`` keeps the best-ranked entry and counts the rest, ``"error"`` refuses the run."""
    root = default_data_root() if root is None else Path(root)
    run_path = None
    if run_file is not None:
        run_path = Path(run_file) if Path(run_file).is_absolute() or root is None else root / run_file
        if not run_path.is_file():
            raise DataError(
                f"{name}: first-stage run file {run_path} does not exist. Write a TREC run "
                "(`query_id Q0 doc_id rank score tag`) for this dataset there, for example "
                "Pyserini's BM25 (`python -m pyserini.search.lucene --index beir-v1.0.0-<name>.flat "
                "--topics beir-v1.0.0-<name>-test --bm25 --hits 100 --remove-query --output <file>`), "
                "or give another path (a study's eval.run_files)"
            )
    dataset_id = resolve_dataset_id(name, root=root, split=split, first_stage=first_stage)
    key = (name, dataset_id, _signature(dataset_id), run_path, _file_signature(run_path), duplicates)
    if key not in _OPEN:
        _OPEN[key] = Collection(name, dataset_id, run_path, duplicates)
    return _OPEN[key]


def _file_signature(path: Path | None) -> tuple[Any, ...]:
    if path is None:
        return ()
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns)
