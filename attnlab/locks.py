"""A lock file beside a folder, so that one process at a time writes it.

``<folder>.lock`` is created atomically (``O_CREAT | O_EXCL``) and holds who took it:
pid, host, the process's start time and when. While held, a thread refreshes its
modification time every :data:`HEARTBEAT_S` seconds. A lock is *stale*, and is broken by
the next process that wants it, when its holder is gone:

- on this host: the pid is not alive, or now belongs to a process started later;
- on another host (a shared file system): no heartbeat for :data:`STALE_AFTER_S`.

Breaking a stale lock is serialised by a short-lived ``<folder>.lock.break`` file, so two
waiters never both break it and one of them remove the lock the other has just taken.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from .paths import pid_alive

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
#: a lock file still empty (its holder is between create and write) for this long is stale
EMPTY_GRACE_S = 30.0


class LockHeldError(TimeoutError):
    """The lock is held by another live process and the wait timed out."""


def _process_start(pid: int) -> Optional[str]:
    """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after "pid (comm)"


def read_lock(path: str | Path) -> Optional[dict]:
    """The holder's record in lock file ``path``: {} while it is being written, None
    when there is no lock."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def describe(info: dict, path: str | Path) -> str:
    if not info:
        return f"lock {path} (holder not yet recorded)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} since {since} (lock {path})"


def is_stale(info: Optional[dict], path: str | Path) -> bool:
    if info is None:
        return False
    try:
        age = time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return False
    if not info:
        return age > EMPTY_GRACE_S
    if info.get("host") != socket.gethostname():
        return age > STALE_AFTER_S
    pid = int(info.get("pid", -1))
    if not pid_alive(pid):
        return True
    start = _process_start(pid)
    return start is not None and info.get("start") is not None and start != info["start"]


def _print_waiting(info: dict, path: Path) -> None:
    print(f"attnlab: waiting for {path.with_suffix('')}: held by {describe(info, path)}",
          file=sys.stderr, flush=True)


class FileLock:
    """``with FileLock(path): ...`` holds ``path`` (e.g. ``runs/<run>.lock``).

    ``timeout``: seconds to wait for a live holder (None waits for as long as it takes,
    0 tries once); then :class:`LockHeldError` names the holder. ``on_wait(info, path)``
    is called once when the lock is found held.
    """

    def __init__(self, path: str | Path, timeout: Optional[float] = None, poll: float = 0.5,
                 on_wait: Optional[Callable[[dict, Path], None]] = _print_waiting):
        self.path = Path(path)
        self.timeout, self.poll, self.on_wait = timeout, poll, on_wait
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def _record(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid),
                "time": time.time(), "token": self.token, "argv": sys.argv[:4]}

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self._record()))
        return True

    def _break_stale(self, seen: dict) -> None:
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a breaker killed half-way leaves its file behind
                if time.time() - breaker.stat().st_mtime > EMPTY_GRACE_S:
                    breaker.unlink()
            except FileNotFoundError:
                pass
            return
        os.close(fd)
        try:
            now = read_lock(self.path)
            if now is not None and now.get("token") == seen.get("token") and is_stale(now, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        told = False
        while not self._try_create():
            info = read_lock(self.path)
            if info is None:
                continue  # released between our attempt and the read
            if is_stale(info, self.path):
                self._break_stale(info)
                continue
            if self.timeout is not None and time.monotonic() - t0 >= self.timeout:
                raise LockHeldError(f"{self.path.with_suffix('')} is locked by {describe(info, self.path)}; "
                                    f"waited {time.monotonic() - t0:.0f} s. If that process is gone, "
                                    f"delete the lock file")
            if not told and self.on_wait is not None:
                self.on_wait(info, self.path)
                told = True
            time.sleep(self.poll)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name=f"lock {self.path.name}")
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        info = read_lock(self.path)
        if info and info.get("token") == self.token:  # never remove a lock we no longer hold
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
