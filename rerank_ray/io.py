"""Atomic writes: every JSON, YAML and Parquet file the project writes goes through here.

A file is written to a temporary file in the same folder, flushed to disk, then moved over the
target with ``os.replace`` (atomic on POSIX within one filesystem). A reader therefore sees the
old file or the new one, never a half-written one, and a run killed mid-write leaves the
previous file intact (plus, at worst, a ``.<name>.<random>.tmp`` file beside it).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`; when the block succeeds it replaces `path` atomically.

    The parent folder is created when missing. On an exception the temporary file is removed
    and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: a fresh name; mode 0o666 less the umask, as a plain open() would give the file.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, **kwargs: Any) -> Path:
    """``json.dumps(obj)`` to `path` atomically; keyword arguments go to ``json.dumps``."""
    return write_text(path, json.dumps(obj, indent=indent, **kwargs))


def write_yaml(path: str | Path, obj: Any, *, sort_keys: bool = False) -> Path:
    """``yaml.safe_dump(obj)`` to `path` atomically."""
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=sort_keys))


def write_parquet(path: str | Path, data: pd.DataFrame | pa.Table, **kwargs: Any) -> Path:
    """A pandas DataFrame (written without its index) or a pyarrow Table to `path` atomically;
    keyword arguments go to ``pyarrow.parquet.write_table``."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(data, preserve_index=False) if isinstance(data, pd.DataFrame) else data
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return Path(path)
