"""Dataset files are untrusted: MD5 before extraction, confined extraction, pickles that cannot run code."""

import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from avalanche_mm.benchmarks.datasets import _safety
from avalanche_mm.benchmarks.datasets._common import DatasetFormatError, md5sum
from avalanche_mm.benchmarks.datasets._safety import (
    KNOWN_MD5,
    UnsafeArchiveError,
    guarded_torchvision,
    load_npy,
    restricted_load,
    safe_extract,
)


def _tar(path, entries):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tar_with_parent_entry_is_refused_and_writes_nothing(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    _tar(archive, [("ok.txt", b"fine"), ("../escaped.txt", b"boom")])
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=r"\.\./escaped\.txt"):
        safe_extract(archive, target)
    assert not (tmp_path / "escaped.txt").exists() and not (target / "ok.txt").exists()


def test_tar_absolute_and_symlink_entries_refused(tmp_path):
    archive = tmp_path / "abs.tar"
    _tar(archive, [(str(tmp_path / "abs.txt"), b"x")])
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, tmp_path / "t1")
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="points outside"):
        safe_extract(link, tmp_path / "t2")


def test_zip_with_parent_entry_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/../../escaped.txt", "boom")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists()


def test_good_archive_extracts(tmp_path):
    archive = tmp_path / "good.tar.gz"
    _tar(archive, [("d/a.txt", b"hello")])
    safe_extract(archive, tmp_path / "t")
    assert (tmp_path / "t" / "d" / "a.txt").read_bytes() == b"hello"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_restricted_unpickler_runs_no_code(tmp_path):
    marker = str(tmp_path / "marker")
    with pytest.raises(pickle.UnpicklingError, match="io.open|builtins.open"):
        restricted_load(pickle.dumps({"data": _Evil(marker)}))
    assert not os.path.exists(marker)
    data = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"fine_labels": [1, 2]}
    out = restricted_load(pickle.dumps(data, protocol=2), encoding="latin1")
    assert np.array_equal(out[b"data"], data[b"data"]) and out[b"fine_labels"] == [1, 2]


def test_npy_dicts_without_numpy_pickle_loader(tmp_path):
    np.save(tmp_path / "d.npy", {"vid": np.ones(3, dtype=np.float32)})
    assert np.array_equal(load_npy(tmp_path / "d.npy").item()["vid"], np.ones(3))
    np.save(tmp_path / "a.npy", np.arange(4))
    assert load_npy(tmp_path / "a.npy").tolist() == [0, 1, 2, 3]
    marker = str(tmp_path / "marker")
    arr = np.empty((), dtype=object)
    arr[()] = _Evil(marker)
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError):
        load_npy(tmp_path / "evil.npy")
    assert not os.path.exists(marker)


def test_guarded_torchvision_checks_md5_and_refuses_unverifiable(tmp_path, monkeypatch):
    from torchvision.datasets import utils as tvu

    payload = tmp_path / "payload.tar.gz"
    _tar(payload, [("fgvc-aircraft-2013b/data/x.txt", b"x")])
    fake_calls = []

    def fake_download(url, root, filename=None, md5=None, max_redirect_hops=3):  # no network in tests
        fake_calls.append((url, md5))
        os.makedirs(root, exist_ok=True)
        dest = os.path.join(root, filename or os.path.basename(url))
        with open(dest, "wb") as fh:
            fh.write(payload.read_bytes())

    _safety._tv_originals()
    monkeypatch.setitem(_safety._ORIGINAL, "download_url", fake_download)
    with guarded_torchvision():
        with pytest.raises(DatasetFormatError, match="no MD5"):
            tvu.download_and_extract_archive("https://example.org/unknown.tar.gz", str(tmp_path / "u"))
        # Aircraft: torchvision gives no md5, the published one is used (and the fake file fails it)
        with pytest.raises(DatasetFormatError, match="MD5 mismatch"):
            tvu.download_and_extract_archive(
                "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz", str(tmp_path / "a"))
        assert fake_calls[-1][1] == KNOWN_MD5["fgvc-aircraft-2013b.tar.gz"] == "d4acdd33327262359767eeaa97a4f732"
        assert not (tmp_path / "a" / "fgvc-aircraft-2013b").exists()  # nothing extracted
        # a verified archive is extracted through safe_extract
        monkeypatch.setitem(KNOWN_MD5, "payload.tar.gz", md5sum(payload))
        tvu.download_and_extract_archive("https://example.org/payload.tar.gz", str(tmp_path / "p"))
        assert (tmp_path / "p" / "fgvc-aircraft-2013b" / "data" / "x.txt").exists()
        evil = tmp_path / "evil.tar.gz"
        _tar(evil, [("../../escaped", b"x")])
        with pytest.raises(UnsafeArchiveError):
            tvu.extract_archive(str(evil), str(tmp_path / "e"))
    assert tvu.download_url is _safety._ORIGINAL["download_url"] or tvu.download_url.__name__ == "download_url"


def test_cifar_pickles_checked_against_published_md5(tmp_path):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from mmbench_fixtures import write_cifar100_pickles

    from avalanche_mm.benchmarks.datasets.cifar import read_cifar100

    write_cifar100_pickles(tmp_path)
    with pytest.raises(DatasetFormatError, match="(?s)checksum mismatch.*verify_checksums=False"):
        read_cifar100(tmp_path)
    assert len(read_cifar100(tmp_path, verify_checksums=False)[1]) == 8
