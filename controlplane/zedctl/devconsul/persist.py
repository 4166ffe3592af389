"""`--data FILE`: the store kept across restarts, written atomically and debounced.

Every save writes a temporary file in the same directory, fsyncs it, renames it over the
data file (os.replace is atomic) and fsyncs the directory, so a crash at any moment leaves
either the old or the new complete file, never one that will not load. A lock file next
to it (flock) keeps two servers from sharing one data file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from .store import Store

DEBOUNCE = 0.05  # seconds: writes within this window share one save


class DataFileError(Exception):
    """The data file exists but cannot be read or loaded."""


class DataFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.directory = self.path.parent if str(self.path.parent) else Path(".")
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        """Take the data file's lock (or raise DataFileError) and remove temporary files
        that a crashed server left behind."""
        lock_path = self.directory / f".{self.path.name}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise DataFileError(
                f"data file {self.path}: cannot create {lock_path}: {err}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DataFileError(
                f"data file {self.path}: in use by another dev-consul ({lock_path} is locked)"
            ) from None
        self._lock_fd = fd
        for stale in self.directory.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def load(self) -> dict[str, Any] | None:
        """The saved snapshot, or None when there is no file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise DataFileError(f"data file {self.path}: cannot read: {err}") from None
        try:
            data = json.loads(text)
        except ValueError as err:
            raise DataFileError(f"data file {self.path}: not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise DataFileError(f"data file {self.path}: not a dev-consul data file")
        return data

    def save(self, snapshot: dict[str, Any]) -> None:
        directory = self.directory
        tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
        data = json.dumps(snapshot, separators=(",", ":")).encode("utf-8")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        try:
            dfd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            with contextlib.suppress(OSError):
                os.fsync(dfd)  # make the rename itself durable
        finally:
            os.close(dfd)


def load_into(store: Store, datafile: DataFile) -> None:
    data = datafile.load()
    if data is None:
        return
    try:
        store.restore(data)
    except (KeyError, TypeError, ValueError) as err:
        raise DataFileError(f"data file {datafile.path}: malformed: {err!r}") from None


class Persister:
    """Saves the store in a background thread shortly after each change, and on stop."""

    def __init__(self, store: Store, datafile: DataFile, debounce: float = DEBOUNCE) -> None:
        self.store = store
        self.datafile = datafile
        self.debounce = debounce
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self.store.on_commit = self.mark_dirty
        self._thread = threading.Thread(target=self._loop, name="dev-consul-persist", daemon=True)
        self._thread.start()

    def mark_dirty(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                self._cond.wait(self.debounce)  # let a burst of writes share one save
                if self._stopping:
                    return
                self._dirty = False
            if not self._save():
                with self._cond:
                    self._dirty = True
                    self._cond.wait(1.0)  # back off before trying again

    def _save(self) -> bool:
        try:
            self.datafile.save(self.store.snapshot())
        except OSError as err:
            message = f"data file {self.datafile.path}: cannot write: {err}"
            if message != self.last_error:
                print(f"dev-consul: {message}", file=sys.stderr, flush=True)
            self.last_error = message
            return False
        self.last_error = None
        return True

    def stop(self) -> None:
        """Stop the thread and write whatever is not saved yet."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.store.on_commit == self.mark_dirty:
            self.store.on_commit = None
        self._save()
        self.datafile.release()
