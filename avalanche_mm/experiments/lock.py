"""One run per results folder at a time.

:class:`RunLock` holds ``OUT/.avalanche-mm.lock`` for the whole run. The lock is
an advisory ``fcntl.flock`` on that file (released by the kernel when the
process ends, however it ends), and the file names the holder: its pid, host,
start time and command. A second run on the same folder stops at once with a
:class:`LockError` naming the holder. A lock file left behind by a killed run
holds no ``flock`` any more and is simply taken over (the previous holder is
logged as recovered).

Where ``fcntl`` is not available (Windows), the file is created exclusively
and a lock whose pid no longer runs on this host is treated as stale.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from typing import Any, Callable, Dict, Optional

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore

LOCK_FILE = ".avalanche-mm.lock"


class LockError(RuntimeError):
    """Another run holds the results folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _read_holder(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return "an unknown process (the lock file is empty)"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')} ({holder.get('command', '')})"


class RunLock:
    """Exclusive hold of a results folder (a context manager).

    :param folder: the results folder (created when missing).
    :param log: where the recovery of a stale lock is reported.
    """

    def __init__(self, folder: str, *, log: Callable[[str], Any] = print):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.log = log
        self._fd: Optional[int] = None
        self.recovered: Optional[Dict[str, Any]] = None

    def acquire(self) -> "RunLock":
        os.makedirs(self.folder, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise LockError(
                    f"{self.folder} is in use by another run: {_describe(_read_holder(self.path))}. Wait for it to "
                    f"finish, stop it, or choose another --output (the lock is {self.path})."
                ) from None
            previous = _read_holder(self.path)
        else:  # pragma: no cover - Windows
            previous = {}
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                    break
                except FileExistsError:
                    previous = _read_holder(self.path)
                    if previous.get("host") == me["host"] and not _pid_alive(int(previous.get("pid") or 0)):
                        os.remove(self.path)
                        continue
                    raise LockError(
                        f"{self.folder} is in use by another run: {_describe(previous)}. Wait for it to finish, stop "
                        f"it, or delete {self.path} if that process is gone."
                    ) from None
            else:
                raise LockError(f"could not take the lock {self.path}.")
        if previous:
            self.recovered = previous
            self.log(f"recovered the lock of a run that ended without releasing it: {_describe(previous)}")
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty lock file: nobody holds the folder
        except OSError:
            pass
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if fcntl is None:  # pragma: no cover - Windows
            try:
                os.remove(self.path)
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clean_orphan_temporaries(folder: str) -> list:
    """Remove the temporary files of atomic writes interrupted by a kill (``.NAME.XXXX.tmp``).

    Only call this while holding the folder's :class:`RunLock`.

    :return: the removed paths.
    """
    removed = []
    for root, dirs, files in os.walk(folder):
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                p = os.path.join(root, f)
                try:
                    os.remove(p)
                    removed.append(p)
                except OSError:
                    pass
    return removed


__all__ = ["RunLock", "LockError", "LOCK_FILE", "clean_orphan_temporaries"]
