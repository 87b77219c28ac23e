"""ir_datasets formats for the BEIR-like layout (``data/README.md``), with line-numbered errors.

- :class:`BeirJsonlDocs`: ``corpus.jsonl``, ``{"_id", "title" (optional), "text"}`` a line, read
  into an ir_datasets docstore (:class:`TitleTextDoc`).
- :class:`BeirJsonlQueries`: ``queries.jsonl``, ``{"_id", "text"}`` a line.
- :class:`BeirTsvQrels`: ``qrels/<split>.tsv``, a header then ``query-id corpus-id score`` rows.
- :class:`TrecRunScoredDocs`: a TREC run, ``query_id Q0 doc_id rank score tag`` a line
  (:class:`RunLine` keeps each entry's line number).

Malformed input (wrong column count, non-integer label, non-finite score, bad JSON, missing
field, empty id) raises :class:`DataError` naming the file and the 1-based line number. So does
data that contradicts itself: a (query, document) pair judged twice with different labels, or a
document id repeated with another title or text; an exact repeat (same label, same text) is
dropped, counted and reported in a warning, and the first occurrence is kept. A UTF-8
byte order mark opening any line is stripped (and the stripped marks counted in a warning), so
it never turns into a phantom id; one inside an id is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
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
    TrecQrel,
)
from ir_datasets.indices import DEFAULT_DOCSTORE_OPTIONS, PickleLz4FullStore
from ir_datasets.util import LocalDownload

logger = logging.getLogger("rerank_ray.data")

NAMESPACE = "rerank-ray"
QRELS_HEADER = ("query-id", "corpus-id", "score")
BOM = "\ufeff"


class DataError(ValueError):
    """Input data is missing or malformed; the message names the file (and line) and the fix."""


class TitleTextDoc(NamedTuple):
    doc_id: str
    text: str
    title: str

    def default_text(self) -> str:
        """``title text``; the title is omitted when empty."""
        return f"{self.title} {self.text}" if self.title else self.text


def _lines(dlc: LocalDownload) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline), blank lines skipped.

    A UTF-8 byte order mark opening a line (the file's start, or a file concatenated into it) is
    stripped, so it never becomes part of an id; the stripped marks are counted in a warning."""
    boms: list[int] = []
    with dlc.stream() as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.startswith(BOM):
                boms.append(number)
                line = line.lstrip(BOM)
            if line.strip():
                yield number, line
    if boms:
        logger.warning(
            "%s: stripped %d UTF-8 byte order mark(s) at the start of line(s) %s; save the file as "
            "UTF-8 without BOM to silence this",
            dlc.path(), len(boms), boms[:10],
        )  # fmt: skip


def _id(path: Path, number: int, value: Any, what: str) -> str:
    """An id field as ``str``; empty ids and ids holding a byte order mark are refused."""
    text = str(value)
    if not text.strip() or BOM in text:
        raise DataError(
            f"{path}:{number}: {what} {text!r} is empty or holds a UTF-8 byte order mark (U+FEFF); "
            "remove it from the file"
        )
    return text


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
        seen: dict[str, tuple[str, int]] = {}  # doc_id -> (digest of title and text, line)
        repeats: list[int] = []
        for number, line in _lines(self._dlc):
            data = _json_object(path, number, line, ("_id", "text"))
            doc = TitleTextDoc(
                _id(path, number, data["_id"], "_id"), str(data["text"]), str(data.get("title") or "")
            )
            digest = hashlib.sha1(f"{doc.title}\0{doc.text}".encode()).hexdigest()
            if doc.doc_id in seen:
                first_digest, first_line = seen[doc.doc_id]
                if digest != first_digest:
                    raise DataError(
                        f"{path}:{number}: document {doc.doc_id!r} is repeated with another title or "
                        f"text than at line {first_line}; give each document one id (delete or rename "
                        "one of the two lines)"
                    )
                repeats.append(number)
                continue
            seen[doc.doc_id] = (digest, number)
            yield doc
        _report_repeats(path, repeats, "document(s) repeated with the same title and text")

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
    # v2: docstores built since repeated ids are checked; older ones are built again.
    key = hashlib.sha1(f"v2|{corpus.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
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
            query_id = _id(path, number, data["_id"], "_id")
            if query_id in keep:
                yield GenericQuery(query_id, str(data["text"]))

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
        seen: dict[tuple[str, str], tuple[int, int]] = {}  # (query, doc) -> (label, line)
        repeats: list[int] = []
        for number, qrel in self._rows(path):
            key = (qrel.query_id, qrel.doc_id)
            if key in seen:
                label, first_line = seen[key]
                if label != qrel.relevance:
                    raise DataError(
                        f"{path}:{number}: query {key[0]!r} document {key[1]!r} is judged {qrel.relevance} "
                        f"here and {label} at line {first_line}; keep one judgment per (query, document) "
                        "pair (delete the wrong line)"
                    )
                repeats.append(number)
                continue
            seen[key] = (qrel.relevance, number)
            yield qrel
        _report_repeats(path, repeats, "judgment(s) repeated with the same label")

    def _rows(self, path: Path) -> Iterator[tuple[int, TrecQrel]]:
        """(line number, judgment) of each row after the header, checked for shape."""
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
            query_id = _id(path, number, query_id, "query-id")
            yield number, TrecQrel(query_id, _id(path, number, doc_id, "corpus-id"), relevance, "0")

    def qrels_cls(self) -> type:
        return TrecQrel

    def qrels_defs(self) -> dict[int, str]:
        return {}


def _report_repeats(path: Path, lines: list[int], what: str) -> None:
    """Warn of exact repeats that were dropped (the first occurrence kept)."""
    if lines:
        logger.warning(
            "%s: dropped %d %s (the first occurrence is kept), at line(s) %s",
            path, len(lines), what, lines[:10],
        )  # fmt: skip


class RunLine(NamedTuple):
    """One line of a TREC run file, with its 1-based line number (for error messages)."""

    query_id: str
    doc_id: str
    score: float
    line: int


class TrecRunScoredDocs(BaseScoredDocs):
    """A TREC run, ``query_id Q0 doc_id rank score tag`` a line (whitespace-separated); the
    score must be a finite number."""

    def __init__(self, dlc: LocalDownload) -> None:
        self._dlc = dlc

    def scoreddocs_path(self) -> Path:
        return self._dlc.path()

    def scoreddocs_iter(self) -> Iterator[RunLine]:
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
            if not math.isfinite(value):
                raise DataError(f"{path}:{number}: the score must be a finite number, found {score!r}")
            yield RunLine(
                _id(path, number, query_id, "query_id"), _id(path, number, doc_id, "doc_id"), value, number
            )

    def scoreddocs_cls(self) -> type:
        return RunLine
