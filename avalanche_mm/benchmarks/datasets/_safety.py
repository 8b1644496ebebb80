"""Untrusted dataset files: verified downloads, confined extraction, pickles without code.

- :func:`download_verified` downloads a file and checks its published MD5
  before anything else touches it; a download without a known MD5 is refused.
- :func:`safe_extract` unpacks tar (any compression) and zip archives,
  refusing every entry that would land outside the target folder (absolute
  paths, ``..``, links pointing out, device files).
- :func:`guarded_torchvision` routes torchvision's dataset downloads through
  both: every archive torchvision extracts goes through :func:`safe_extract`,
  and a download torchvision would do without an MD5 gets the published one
  from :data:`KNOWN_MD5` (FGVC-Aircraft) or is refused.
- :func:`restricted_load` reads a pickle (CIFAR python batches, AV-CIL
  ``.npy`` dicts) with an unpickler that can only rebuild plain containers
  and NumPy arrays: a crafted file cannot name any other callable, so
  loading it executes nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

from ._common import DatasetFormatError, md5sum

PathLike = Union[str, os.PathLike]

#: published MD5 of archives that torchvision downloads without one
KNOWN_MD5: Dict[str, str] = {
    # FGVC-Aircraft 2013b, as published with the dataset's mirrors (torchvision's
    # FGVCAircraft passes no md5; the same value is checked by torchvision's R port and TFDS)
    "fgvc-aircraft-2013b.tar.gz": "d4acdd33327262359767eeaa97a4f732",
}


class UnsafeArchiveError(DatasetFormatError):
    """An archive holds an entry that would be written outside its target folder."""


# ---------------------------------------------------------------------------
# downloads
# ---------------------------------------------------------------------------
def download_verified(url: str, root: PathLike, *, md5: Optional[str], filename: Optional[str] = None) -> Path:
    """Download ``url`` into ``root`` and check its MD5 before returning it.

    :raises DatasetFormatError: no MD5 known, or a mismatch (the file is deleted).
    """
    filename = filename or os.path.basename(url)
    md5 = md5 or KNOWN_MD5.get(filename)
    if not md5:
        raise DatasetFormatError(f"refusing to download {url}: no published MD5 is known for {filename}, so it could not be verified.")
    _tv_originals()
    path = Path(root) / filename
    if not (path.exists() and md5sum(path) == md5):
        os.makedirs(root, exist_ok=True)
        _ORIGINAL["download_url"](url, str(root), filename, md5)
    got = md5sum(path)
    if got != md5:
        path.unlink(missing_ok=True)
        raise DatasetFormatError(f"{path}: md5 {got}, expected {md5} (corrupt or tampered download); it was deleted, download again.")
    return path


# ---------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------
def _inside(root: str, name: str) -> bool:
    target = os.path.realpath(os.path.join(root, name))
    return os.path.commonpath([root, target]) == root


def _check_name(archive: PathLike, root: str, name: str) -> None:
    if not name or os.path.isabs(name) or name.startswith(("/", "\\")) or "\x00" in name or not _inside(root, name):
        raise UnsafeArchiveError(f"{archive}: entry {name!r} would be written outside {root}; refusing to extract this archive.")


def safe_extract(archive: PathLike, target: PathLike) -> Path:
    """Extract a tar or zip archive into ``target``, refusing entries that leave it.

    Every entry is checked before anything is written, so a refused archive
    leaves ``target`` untouched.
    """
    os.makedirs(target, exist_ok=True)
    root = os.path.realpath(target)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                _check_name(archive, root, m.name)
                if m.issym() or m.islnk():
                    link = m.linkname if m.islnk() else os.path.join(os.path.dirname(m.name), m.linkname)
                    if os.path.isabs(m.linkname) or not _inside(root, link):
                        raise UnsafeArchiveError(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {root}; refusing to extract.")
                elif not (m.isfile() or m.isdir()):
                    raise UnsafeArchiveError(f"{archive}: entry {m.name!r} is a device or FIFO; refusing to extract.")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root, members=members, **kwargs)  # noqa: S202 - every member checked above
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_name(archive, root, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UnsafeArchiveError(f"{archive}: entry {info.filename!r} is a symbolic link; refusing to extract.")
            zf.extractall(root)
    else:
        raise DatasetFormatError(f"{archive}: not a tar or zip archive.")
    return Path(root)


# ---------------------------------------------------------------------------
# torchvision's downloaders, guarded
# ---------------------------------------------------------------------------
_ORIGINAL: Dict[str, Any] = {}


def _tv_originals():
    from torchvision.datasets import utils as tvu

    if not _ORIGINAL:
        _ORIGINAL["download_url"] = tvu.download_url
        _ORIGINAL["extractors"] = dict(tvu._ARCHIVE_EXTRACTORS)
    return tvu


def _guarded_download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
    filename = filename or os.path.basename(url)
    md5 = md5 or KNOWN_MD5.get(os.path.basename(str(filename)))
    if not md5:
        raise DatasetFormatError(f"refusing to download {url}: torchvision gives no MD5 for it and none is published here, so it could not be verified.")
    _ORIGINAL["download_url"](url, root, filename, md5, max_redirect_hops)
    path = os.path.join(os.path.expanduser(str(root)), str(filename))
    if md5sum(path) != md5:  # torchvision checks too; checked again before extraction
        raise DatasetFormatError(f"{path}: MD5 mismatch after download; delete it and download again.")


def _guarded_extractor(from_path, to_path, compression):
    safe_extract(from_path, to_path)


@contextlib.contextmanager
def guarded_torchvision() -> Iterator[None]:
    """Within the block, torchvision downloads are MD5-checked and extractions confined."""
    tvu = _tv_originals()
    saved_dl, saved_ex = tvu.download_url, dict(tvu._ARCHIVE_EXTRACTORS)
    tvu.download_url = _guarded_download_url
    for k in list(tvu._ARCHIVE_EXTRACTORS):
        tvu._ARCHIVE_EXTRACTORS[k] = _guarded_extractor
    try:
        yield
    finally:
        tvu.download_url = saved_dl
        tvu._ARCHIVE_EXTRACTORS.clear()
        tvu._ARCHIVE_EXTRACTORS.update(saved_ex)


# ---------------------------------------------------------------------------
# pickles that can only hold data
# ---------------------------------------------------------------------------
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes pickled by Python 2 / protocol 2
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the pickle names {module}.{name}, which a data file has no reason to hold; refusing to load it")


def restricted_load(data: Union[bytes, io.IOBase], *, encoding: str = "ASCII") -> Any:
    """Unpickle ``data`` allowing only plain containers, strings, numbers and NumPy arrays."""
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    return _DataOnlyUnpickler(fh, encoding=encoding).load()


def load_npy(path: PathLike) -> Any:
    """Read a ``.npy`` file: plain arrays with ``allow_pickle=False``; object arrays (pickled
    dicts) only through :func:`restricted_load`, never NumPy's unrestricted unpickler."""
    import numpy as np

    with open(path, "rb") as fh:
        fmt = np.lib.format
        version = fmt.read_magic(fh)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = reader(fh, max_header_size=1 << 20)
        if not dtype.hasobject:
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        obj = restricted_load(fh, encoding="latin1")
    return obj


__all__ = [
    "KNOWN_MD5",
    "UnsafeArchiveError",
    "download_verified",
    "safe_extract",
    "guarded_torchvision",
    "restricted_load",
    "load_npy",
]
