"""Atomic writes: every JSON, YAML, Parquet and text file the project writes goes through here.

A file is written to a temporary file in the same folder, flushed to disk, then moved over the
target with ``os.replace`` (atomic on POSIX within one filesystem). A reader therefore sees the
old file or the new one, never a half-written one, and a run killed mid-write leaves the
previous file intact (plus, at worst, a ``.<name>.<random>.tmp`` file beside it). A folder (a
saved model) is written the same way by :func:`atomic_dir`: into a hidden temporary folder,
then renamed into place, so a folder under the final name is always complete.

A write that runs out of space (``ENOSPC``, or a quota's ``EDQUOT``) removes its temporary file
or folder and raises :class:`DiskFull`, which names the path, about how much it needed and how
much is free; a file whose size is known in advance is refused before a byte is written.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """No space left on the filesystem of `path`: about `needed` bytes were needed (None:
    unknown; `at_least`: more than that), `free` bytes are free (None: unknown) on the
    filesystem mounted at `mount`."""

    def __init__(
        self,
        path: str | Path,
        needed: int | None,
        free: int | None,
        mount: str | Path | None,
        at_least: bool = False,
    ) -> None:
        self.path, self.needed, self.free, self.at_least = str(path), needed, free, at_least
        self.mount = str(mount) if mount is not None else None
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)

    def __str__(self) -> str:
        sizes = []
        if self.needed is not None:
            sizes.append(f"needed {'more than ' if self.at_least else '~'}{human_bytes(self.needed)}")
        if self.free is not None:
            sizes.append(f"{human_bytes(self.free)} free on {self.mount}")
        return f"no space left on device writing {self.path}" + (f" ({', '.join(sizes)})" if sizes else "")

    def __reduce__(self) -> tuple[Any, ...]:  # OSError pickles its args, which are not ours
        return (type(self), (self.path, self.needed, self.free, self.mount, self.at_least))

    @classmethod
    def at(cls, path: str | Path, needed: int | None = None, *, at_least: bool = False) -> DiskFull:
        """A DiskFull for `path`, with the free space and mount point of its filesystem now."""
        mount = existing_parent(Path(path))
        try:
            free: int | None = shutil.disk_usage(mount).free
        except OSError:
            free = None
        while not os.path.ismount(mount) and mount != mount.parent:
            mount = mount.parent
        return cls(path, needed, free, mount, at_least)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-space error: an OSError with ENOSPC or EDQUOT, or an error
    whose message quotes one (safetensors' ``SafetensorError``, the list ``shutil.copytree``
    raises, which carry no errno)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in NO_SPACE
    return any(os.strerror(code) in str(exc) for code in NO_SPACE)


def as_disk_full(exc: BaseException, path: str | Path | None = None) -> DiskFull:
    """`exc` (an out-of-space error) as a DiskFull naming `path` (default: the file it names)."""
    if isinstance(exc, DiskFull):
        return exc
    path = path or getattr(exc, "filename", None)
    if path is None:  # e.g. a C library's write: the free space of an unknown filesystem is no help
        return DiskFull("a file it did not name", None, None, None)
    return DiskFull.at(os.fsdecode(path))


def existing_parent(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_bytes(n: int) -> str:
    """``512 B``, ``12.3 kB``, ``4.5 MB``, ``1.2 GB`` (powers of 1000, as ``df -H``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (a file: its size); 0 when it is gone."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


@contextmanager
def atomic_path(path: str | Path, *, needed: int | None = None) -> Iterator[Path]:
    """A temporary path beside `path`; when the block succeeds it replaces `path` atomically.

    The parent folder is created when missing. On an exception the temporary file is removed
    and `path` is left as it was; running out of space raises :class:`DiskFull` (`needed`: the
    size the file will have, when known; else what the temporary file had reached)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: a fresh name; mode 0o666 less the umask, as a plain open() would give the file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        if isinstance(exc, DiskFull) or not is_disk_full(exc):
            raise
        reached = tree_size(tmp)
        tmp.unlink(missing_ok=True)  # frees its space before the free space is measured
        raise (DiskFull.at(path, needed) if needed else DiskFull.at(path, reached, at_least=True)) from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, *, needed: int | None = None) -> Iterator[Path]:
    """A temporary folder beside `path`; when the block succeeds it replaces `path` (a folder).

    Every file in it is flushed to disk, then the old folder (if any) is moved aside, the new
    one renamed into place and the old one deleted. On an exception the temporary folder is
    deleted and `path` is left as it was; running out of space raises :class:`DiskFull` naming
    `path` and `needed` (the folder's expected size; else what it held when space ran out)."""
    path = Path(path)
    token = secrets.token_hex(6)
    tmp, old = path.parent / f".{path.name}.{token}.tmp", path.parent / f".{path.name}.{token}.old"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        fsync_tree(tmp)
        _swap(tmp, path, old)
    except Exception as exc:
        if isinstance(exc, DiskFull) or not is_disk_full(exc):
            raise
        reached = tree_size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # frees its space before the free space is measured
        raise (DiskFull.at(path, needed) if needed else DiskFull.at(path, reached, at_least=True)) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def copy_tree(src: str | Path, dst: str | Path) -> Path:
    """Replace folder `dst` with a copy of folder `src`, atomically (:func:`atomic_dir`)."""
    with atomic_dir(dst, needed=tree_size(Path(src))) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return Path(dst)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folders themselves, to disk."""
    for item in [folder, *folder.rglob("*")]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _swap(new: Path, path: Path, old: Path) -> None:
    """Rename folder `new` to `path`, moving an existing `path` to `old` first (put back if the
    second rename fails, so `path` is never lost)."""
    moved = path.exists()
    if moved:
        os.replace(path, old)
    try:
        os.replace(new, path)
    except OSError:
        if moved:
            os.replace(old, path)
        raise


def write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Write `data` to `path` atomically; returns `path`. Refused (DiskFull) before a byte is
    written when the filesystem has less free space than `data` needs."""
    path, size = Path(path), memoryview(data).nbytes
    try:
        free: int | None = shutil.disk_usage(existing_parent(path.parent)).free
    except OSError:
        free = None
    if free is not None and free < size:
        raise DiskFull.at(path, size)
    with atomic_path(path, needed=size) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, **kwargs: Any) -> Path:
    """``json.dumps(obj)`` to `path` atomically; keyword arguments go to ``json.dumps``."""
    return write_text(path, json.dumps(obj, indent=indent, **kwargs))


def write_yaml(path: str | Path, obj: Any, *, sort_keys: bool = False) -> Path:
    """``yaml.safe_dump(obj)`` to `path` atomically."""
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=sort_keys))


def write_parquet(path: str | Path, data: pd.DataFrame | pa.Table, **kwargs: Any) -> Path:
    """A pandas DataFrame (written without its index) or a pyarrow Table to `path` atomically;
    keyword arguments go to ``pyarrow.parquet.write_table``. The file is built in memory first
    (Parquet is compressed: smaller than the table), so its size is known before writing."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(data, preserve_index=False) if isinstance(data, pd.DataFrame) else data
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **kwargs)
    return write_bytes(path, memoryview(sink.getvalue()))
