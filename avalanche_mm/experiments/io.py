"""Atomic writes for the results folder.

Every file of a results folder is written to a temporary file in the same
directory and moved into place with :func:`os.replace`, which is atomic on
POSIX and Windows: a reader (or a resumed run) sees either the old file or the
new one, never half of it. Append-only files (JSON lines) are the exception:
they are appended line by line and their committed length is recorded in the
strategy's state file, so a resumed run truncates whatever was written after
the last finished experience.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: str, writer: Callable[[Any], None], *, binary: bool) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates 0600; give the file the mode open() would (0666 minus the umask)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str, text: str) -> str:
    """Write ``text`` to ``path`` atomically (UTF-8).

    :param path: destination file; parent folders are created.
    :param text: the content.
    :return: ``path``.
    """
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text: text must be a str, got {type(text).__name__}.")
    return _atomic(path, lambda fh: fh.write(text), binary=False)


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda fh: fh.write(data), binary=True)


def _json_default(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def clean_json(obj: Any) -> Any:
    """Replace non-finite floats by None (JSON has no NaN) recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return clean_json(obj.tolist())
    return obj


def atomic_write_json(path: str, obj: Any, *, indent: Optional[int] = 2) -> str:
    """Write ``obj`` as JSON atomically (NaN/inf become ``null``)."""
    text = json.dumps(clean_json(obj), indent=indent, sort_keys=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(path: str, rows: Iterable[Sequence[Any]], header: Optional[Sequence[str]] = None) -> str:
    """Write rows as CSV atomically.

    :param path: destination file.
    :param rows: an iterable of rows (sequences of cells).
    :param header: optional first row.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(list(header))
    for row in rows:
        w.writerow(["" if (isinstance(c, float) and not math.isfinite(c)) else c for c in row])
    return atomic_write_text(path, buf.getvalue())


def atomic_torch_save(path: str, obj: Any) -> str:
    """``torch.save`` atomically (temporary file + ``os.replace``)."""
    return _atomic(path, lambda fh: torch.save(obj, fh), binary=True)


def read_json(path: str) -> Any:
    """Read a JSON file, with an error that names the file when it is corrupt."""
    with open(path, "r", encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it to start over.") from err


def append_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> int:
    """Append records to a JSON-lines file, flushed to disk.

    :return: the file size in bytes after the append (the committed length).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(clean_json(r), default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def truncate_file(path: str, size: int) -> None:
    """Cut ``path`` to ``size`` bytes (drops lines written after the last commit).

    A missing file with ``size == 0`` is fine; a file shorter than ``size``
    means the folder was tampered with and raises.
    """
    if not os.path.exists(path):
        if size:
            raise FileNotFoundError(
                f"{path} is missing but the state file says {size} bytes were committed; the "
                "results folder is incomplete - delete it (or use a new --output) to start over."
            )
        return
    actual = os.path.getsize(path)
    if actual < size:
        raise ValueError(
            f"{path} has {actual} bytes but {size} were committed; the results folder is "
            "inconsistent - delete it (or use a new --output) to start over."
        )
    if actual > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)


def read_jsonl(path: str) -> list:
    """All records of a JSON-lines file (an empty list when it does not exist)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, "r", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {i + 1}: not valid JSON ({err}).") from err
    return out


__all__ = [
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_torch_save",
    "clean_json",
    "read_json",
    "append_jsonl",
    "truncate_file",
    "read_jsonl",
    "current_umask",
]
