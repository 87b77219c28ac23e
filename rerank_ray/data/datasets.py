"""Open a retrieval collection: a local BEIR-like folder or an ir_datasets id, through one reader.

``open_collection(name, root=..., split=..., first_stage=...)`` returns a :class:`Collection`.

- ``name`` naming a folder under ``root`` (layout in ``../shared/data/README.md``: ``corpus.jsonl``,
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
  descending; ties keep file order).
- ``doc_text(doc_id)``: ``title + " " + text``, the title omitted when empty.
- ``docs_store``: the ir_datasets docstore. For local folders it is built once per corpus file
  version under ``$IR_DATASETS_HOME/rerank-ray/docstores`` (never beside the shared data) and
  reused by every later process.

Malformed input (wrong column count, non-integer label, bad JSON, missing field) raises
:class:`DataError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import ir_datasets
from ir_datasets.formats import (
    BaseDocs,
    BaseQrels,
    BaseQueries,
    BaseScoredDocs,
    GenericQuery,
    GenericScoredDoc,
    TrecQrel,
)
from ir_datasets.indices import DEFAULT_DOCSTORE_OPTIONS, PickleLz4FullStore
from ir_datasets.util import LocalDownload

from rerank_ray.config import default_data_root

log = logging.getLogger("rerank_ray.data")

NAMESPACE = "rerank-ray"
QRELS_HEADER = ("query-id", "corpus-id", "score")


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file (and line) and the fix."""


# ---------------------------------------------------------------------------------------------
# ir_datasets formats for the BEIR-like layout, with line-numbered errors.


class TitleTextDoc(NamedTuple):
    doc_id: str
    text: str
    title: str

    def default_text(self) -> str:
        """``title text``; the title is omitted when empty."""
        return f"{self.title} {self.text}" if self.title else self.text


def _lines(dlc: LocalDownload) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline), blank lines skipped."""
    with dlc.stream() as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _json_object(path: Path, number: int, line: str, required: tuple[str, ...]) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number}: not valid JSON ({e.msg}): {line[:80]!r}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}:{number}: expected a JSON object, found {type(data).__name__}")
    missing = [key for key in required if key not in data]
    if missing:
        raise DataError(f"{path}:{number}: missing field(s) {missing}; expected {list(required)}")
    return data


class BeirJsonlDocs(BaseDocs):
    """``corpus.jsonl``: ``{"_id", "title" (optional), "text"}`` a line -> :class:`TitleTextDoc`."""

    def __init__(self, dlc: LocalDownload, namespace: str) -> None:
        super().__init__()
        self._dlc = dlc
        self._namespace = namespace

    def _docs_iter(self) -> Iterator[TitleTextDoc]:
        path = self._dlc.path()
        for number, line in _lines(self._dlc):
            data = _json_object(path, number, line, ("_id", "text"))
            yield TitleTextDoc(str(data["_id"]), str(data["text"]), str(data.get("title") or ""))

    def docs_iter(self) -> Iterator[TitleTextDoc]:
        return iter(self.docs_store())

    def docs_cls(self) -> type:
        return TitleTextDoc

    def docs_store(
        self, field: str = "doc_id", options: Any = DEFAULT_DOCSTORE_OPTIONS
    ) -> PickleLz4FullStore:
        return PickleLz4FullStore(
            path=str(_docstore_dir(self._dlc.path()) / "docs.pklz4"),
            init_iter_fn=self._docs_iter,
            data_cls=TitleTextDoc,
            lookup_field=field,
            index_fields=["doc_id"],
            options=options,
        )

    def docs_count(self) -> int | None:
        store = self.docs_store()
        return store.count() if store.built() else None

    def docs_namespace(self) -> str:
        return self._namespace

    def docs_lang(self) -> None:
        return None


def _docstore_dir(corpus: Path) -> Path:
    """One docstore per corpus file *version*: a rewritten corpus gets a fresh one."""
    stat = corpus.stat()
    key = hashlib.sha1(f"{corpus.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    slug = "-".join(corpus.resolve().parent.parts[-2:])
    return ir_datasets.util.home_path() / NAMESPACE / "docstores" / f"{slug}-{key}"


class BeirJsonlQueries(BaseQueries):
    """``queries.jsonl``: ``{"_id", "text"}`` a line, kept when ``keep()`` contains the id."""

    def __init__(self, dlc: LocalDownload, namespace: str, keep: Callable[[], set[str]]) -> None:
        super().__init__()
        self._dlc = dlc
        self._namespace = namespace
        self._keep = keep

    def queries_iter(self) -> Iterator[GenericQuery]:
        path = self._dlc.path()
        keep = self._keep()
        for number, line in _lines(self._dlc):
            data = _json_object(path, number, line, ("_id", "text"))
            if str(data["_id"]) in keep:
                yield GenericQuery(str(data["_id"]), str(data["text"]))

    def queries_cls(self) -> type:
        return GenericQuery

    def queries_namespace(self) -> str:
        return self._namespace

    def queries_lang(self) -> None:
        return None


class BeirTsvQrels(BaseQrels):
    """``qrels/<split>.tsv``: the header ``query-id corpus-id score``, then tab-separated rows
    with an integer label. (ir_datasets' own ``BeirQrels`` only asserts on a bad header and
    reports no line numbers, hence this class.)"""

    def __init__(self, dlc: LocalDownload) -> None:
        self._dlc = dlc

    def qrels_path(self) -> Path:
        return self._dlc.path()

    def qrels_iter(self) -> Iterator[TrecQrel]:
        path = self._dlc.path()
        lines = _lines(self._dlc)
        for number, line in lines:
            if tuple(line.split("\t")) != QRELS_HEADER:
                raise DataError(
                    f"{path}:{number}: expected the header {chr(9).join(QRELS_HEADER)!r}, found {line[:80]!r}"
                )
            break
        for number, line in lines:
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataError(
                    f"{path}:{number}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                    f"found {len(cols)}: {line[:80]!r}"
                )
            query_id, doc_id, label = cols
            try:
                relevance = int(label)
            except ValueError:
                raise DataError(f"{path}:{number}: the label must be an integer, found {label!r}") from None
            yield TrecQrel(query_id, doc_id, relevance, "0")

    def qrels_cls(self) -> type:
        return TrecQrel

    def qrels_defs(self) -> dict[int, str]:
        return {}


class TrecRunScoredDocs(BaseScoredDocs):
    """A TREC run, ``query_id Q0 doc_id rank score tag`` a line (whitespace-separated)."""

    def __init__(self, dlc: LocalDownload) -> None:
        self._dlc = dlc

    def scoreddocs_path(self) -> Path:
        return self._dlc.path()

    def scoreddocs_iter(self) -> Iterator[GenericScoredDoc]:
        path = self._dlc.path()
        for number, line in _lines(self._dlc):
            cols = line.split()
            if len(cols) != 6:
                raise DataError(
                    f"{path}:{number}: expected 6 columns (query_id Q0 doc_id rank score tag), "
                    f"found {len(cols)}: {line[:80]!r}"
                )
            query_id, _, doc_id, rank, score, _ = cols
            try:
                int(rank)
                value = float(score)
            except ValueError:
                raise DataError(
                    f"{path}:{number}: rank must be an integer and score a number, found {rank!r} and {score!r}"
                ) from None
            yield GenericScoredDoc(query_id, doc_id, value)

    def scoreddocs_cls(self) -> type:
        return GenericScoredDoc


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

    def __init__(self, name: str, dataset_id: str, run_file: Path | None = None) -> None:
        self.name = name
        self.dataset_id = dataset_id
        # A TREC run read instead of the dataset's scoreddocs (ids without one, such as BEIR).
        self.run_file = run_file

    def __repr__(self) -> str:
        return f"Collection(name={self.name!r}, dataset_id={self.dataset_id!r}, run_file={self.run_file!r})"

    @functools.cached_property
    def dataset(self) -> Any:
        return ir_datasets.load(self.dataset_id)

    @functools.cached_property
    def queries(self) -> dict[str, str]:
        with self._fetching("queries"):
            return {q.query_id: q.default_text() for q in self.dataset.queries_iter()}

    @functools.cached_property
    def qrels(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self._fetching("qrels"):
            for qrel in self.dataset.qrels_iter():
                out.setdefault(qrel.query_id, {})[qrel.doc_id] = int(qrel.relevance)
        return out

    @functools.cached_property
    def run(self) -> dict[str, list[tuple[str, float]]]:
        if self.run_file is not None:
            scoreddocs = TrecRunScoredDocs(LocalDownload(self.run_file, mkdir=False)).scoreddocs_iter()
        elif self.dataset.has_scoreddocs():
            with self._fetching("scoreddocs"):
                scoreddocs = list(self.dataset.scoreddocs_iter())
        else:
            raise DataError(
                f"{self.dataset_id} has no first-stage run (scoreddocs) to rerank or sample from; "
                "give one as a TREC run file (a suite's run_file, or a study's eval.run_files)"
            )
        out: dict[str, list[tuple[str, float]]] = {}
        for sd in scoreddocs:
            out.setdefault(sd.query_id, []).append((sd.doc_id, float(sd.score)))
        for ranked in out.values():
            ranked.sort(key=lambda pair: -pair[1])  # stable: ties keep file order
        return out

    @functools.cached_property
    def docs_store(self) -> Any:
        with self._fetching("docs"):
            return self.dataset.docs_store()

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
) -> Collection:
    """The collection `name` (a folder under `root`, default the configured data root, or an
    ir_datasets id). The same arguments give the same object while the files are unchanged,
    so parsed queries, qrels and run are shared within a process.

    `run_file` (a TREC run; relative paths are under `root`) replaces the first-stage run; an
    ir_datasets id without scoreddocs (BEIR) needs one to be reranked."""
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
    key = (name, dataset_id, _signature(dataset_id), run_path, _file_signature(run_path))
    if key not in _OPEN:
        _OPEN[key] = Collection(name, dataset_id, run_path)
    return _OPEN[key]


def _file_signature(path: Path | None) -> tuple[Any, ...]:
    if path is None:
        return ()
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns)
