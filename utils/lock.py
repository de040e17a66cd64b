"""``training.lock``: one training run per checkpoint folder, and a run that lost its lock writes nothing.

Kept free of torch so that a lock can be taken (and tested, in many processes) cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:       # Windows: no advisory locks; the rename protocol below still holds
    fcntl = None


class CheckpointError(RuntimeError):
    """A checkpoint or its folder that does not fit this config, cannot be read or written, or is another
    run's. The message says what to do. (Defined here, beside the folder lock, so the lock needs no torch.)"""


class LockLost(CheckpointError):
    """This run's lock was taken over by another run (after this one was paused past the staleness)."""


def unwritable_message(setting: str, folder: str | Path, err: OSError) -> str:
    """What to tell a student whose ``setting`` folder cannot be written (config paths, checkpoints)."""
    import errno

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"Cannot write to {setting}={str(folder)!r}: its disk is full ({err.strerror}). Free space there "
                f"(on Colab: empty Drive's trash, or check the quota), or choose a folder on another disk "
                f"({setting}=...), then run again. Nothing was written.")
    return (f"Cannot write to {setting}={str(folder)!r}: the folder cannot be written ({err.strerror or err}). "
            f"Choose a folder you can write to ({setting}=...), or fix its permissions; on Colab, check that Drive "
            "is mounted and not full.")


class TrainingLock:
    """``training.lock`` in a checkpoint folder: one training run per folder at a time.

    Two runs on one folder (two Colab tabs, the CLI beside a notebook) would overwrite each other's
    checkpoints. The lock holds its owner (a random token, host, process, start) and is renewed every
    ``RENEW_SECONDS`` by a background thread; a lock whose process is gone (same host), that was not
    renewed for ``STALE_SECONDS`` (a Colab session that disconnected) or that is no lock at all (empty,
    garbage) is taken over.

    Atomic on one machine: taking, judging and replacing the lock happen under an advisory ``flock`` of
    the folder, and the lock file appears with its content in one step (a hard link of a finished temp
    file), so two runs starting at the same instant never both hold it. A stale lock is first renamed
    away and checked to be the one judged stale. Across machines (Drive) the flock does not reach, and
    the rename protocol is best effort.

    A run paused past the staleness (Ctrl-Z, a suspended laptop, a frozen tab) may come back to find its
    lock taken: ``owned()`` (used around every checkpoint and hand-in write) then raises ``LockLost``
    and nothing is written.
    """

    RENEW_SECONDS = 30
    STALE_SECONDS = 300
    GUARD_SECONDS = 10.0         # longest wait for another process's short turn at the folder's flock
    _held: set[str] = set()      # tokens of the locks this process holds now (other threads, nested runs)

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "training.lock"
        self.token = uuid.uuid4().hex
        self.took_over: str | None = None    # whose stale lock this one replaced, and why
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None          # set by the renewing thread when it finds another owner

    # ------------------------------------------------------------------ taking and giving back
    def __enter__(self) -> "TrainingLock":
        record = json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._guard():
                self._acquire(record)
        except OSError as err:
            raise CheckpointError(unwritable_message("checkpoint_dir", self.path.parent, err)) from err
        TrainingLock._held.add(self.token)
        self._thread = threading.Thread(target=self._renew, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        TrainingLock._held.discard(self.token)
        try:
            with self._guard():
                if self._read().get("token") == self.token:      # never remove a lock another run took over
                    self.path.unlink()
        except (OSError, CheckpointError):
            pass

    def _acquire(self, record: str) -> None:
        for _ in range(5):
            if self._create(record):
                return
            raw, age = self._read_raw()
            if raw is None:
                continue                                         # gone in between: try again
            held = _parse(raw)
            why = self._stale_reason(held, raw, age)
            if why is None:
                raise CheckpointError(self._busy_message(held, age))
            if self._remove_if_unchanged(raw):
                self.took_over = f"{_describe(held, raw)} ({why})"
        raise CheckpointError(self._busy_message({}, 0.0))

    def _create(self, record: str) -> bool:
        """Make the lock file with ``record`` in it, in one step; False if a lock is there."""
        tmp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
        try:
            _write_durably(tmp, record)
            try:
                os.link(tmp, self.path)                          # appears whole, or not at all
                return True
            except FileExistsError:
                return False
            except OSError:                                      # no hard links here (some FUSE mounts)
                pass
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            try:
                os.write(fd, record.encode())
                os.fsync(fd)
            except OSError:
                os.close(fd)
                self.path.unlink(missing_ok=True)                # never leave an empty lock behind
                raise
            os.close(fd)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_if_unchanged(self, raw: bytes) -> bool:
        """Rename the lock judged stale out of the way; if what was renamed is not that lock (another
        machine replaced it meanwhile), put it back. True when the stale lock is gone."""
        aside = self.path.with_name(f".{self.path.name}.{self.token}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            if aside.read_bytes() == raw:
                return True
            try:
                os.link(aside, self.path)                        # not the one judged: give it back
            except OSError:
                pass
            return False
        finally:
            aside.unlink(missing_ok=True)

    # ------------------------------------------------------------------ while training
    def verify(self) -> None:
        """Raise ``LockLost`` unless this run still holds the lock."""
        if self._lost is None:
            raw, age = self._read_raw()
            if raw is None and self.path.exists():
                return                                           # unreadable this instant (a Drive hiccup): no verdict
            held = _parse(raw) if raw is not None else {}
            if held.get("token") != self.token:
                self._lost = (f"{_describe(held, raw)} holds it now (renewed {age:.0f} s ago)" if raw is not None
                              else "the lock file is gone")
        if self._lost is not None:
            raise LockLost(
                f"This run no longer holds the lock of {self.path.parent}: {self._lost}. It was taken over while "
                f"this run was not renewing it for over {self.STALE_SECONDS} s (the process was paused: Ctrl-Z, a "
                "suspended laptop, a frozen Colab tab). So that two runs never write over each other, this run "
                "stopped without writing anything more: the folder's checkpoints and hand-in files are the other "
                "run's. To go on with this folder, let the other run finish (or stop it), then run again: it "
                "resumes from the folder's last checkpoint.")

    @contextlib.contextmanager
    def owned(self):
        """Hold the folder while writing: verified to be this run's, and no takeover until the block ends."""
        with self._guard():
            self.verify()
            yield

    def _renew(self) -> None:
        while not self._stop.wait(self.RENEW_SECONDS):
            raw, _ = self._read_raw()
            if raw is None or _parse(raw).get("token") != self.token:
                return                                           # taken over: verify() says so at the next write
            try:
                os.utime(self.path)
            except OSError:
                pass

    # ------------------------------------------------------------------ reading and judging
    def _read_raw(self) -> tuple[bytes | None, float]:
        """The lock file's bytes and age in seconds; (None, 0) when there is none."""
        try:
            raw = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return None, 0.0
        return raw, max(age, 0.0)

    def _read(self) -> dict:
        raw, _ = self._read_raw()
        return _parse(raw) if raw is not None else {}

    def _stale_reason(self, held: dict, raw: bytes, age: float) -> str | None:
        """Why the lock ``held`` (its bytes ``raw``, ``age`` s since renewed) may be taken over, or None."""
        if not held:
            if not raw and age < 2:
                return None          # being written right now by a run without hard links (its own O_EXCL path)
            return "an empty lock file" if not raw else "not a lock this bundle wrote"
        if held.get("host") == socket.gethostname() and held.get("pid") is not None:
            if held["pid"] == os.getpid():
                if held.get("token") not in TrainingLock._held:
                    return "left by this process (an interrupted earlier run)"
            else:
                try:
                    os.kill(held["pid"], 0)
                except ProcessLookupError:
                    return "its process has ended"
                except (PermissionError, OverflowError):
                    pass
        if age > self.STALE_SECONDS:
            return f"not renewed for {age:.0f} s"
        return None

    def _busy_message(self, held: dict, age: float) -> str:
        return (f"Another run is training in {self.path.parent}: {_describe(held, None)} (its lock was renewed "
                f"{age:.0f} s ago). Two runs on one checkpoint folder would overwrite each other's checkpoints. Wait "
                f"for it to finish or stop it. If it is gone (a disconnected Colab session), its lock expires "
                f"{self.STALE_SECONDS} s after its last renewal, or delete {self.path}. To train a second model, "
                "use another checkpoint_dir (or run_name).")

    @contextlib.contextmanager
    def _guard(self):
        """An exclusive flock of the folder for the few milliseconds of a check-and-write (where flock exists)."""
        fd = None
        if fcntl is not None:
            try:
                fd = os.open(self.path.parent, os.O_RDONLY)
            except OSError:
                fd = None
        try:
            if fd is not None:
                deadline = time.monotonic() + self.GUARD_SECONDS
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise CheckpointError(
                                f"Another process has held {self.path.parent}'s lock for over {self.GUARD_SECONDS:.0f} s "
                                "while checking or writing it (paused in the middle?). Run again when it is done."
                            ) from None
                        time.sleep(0.001)
                    except OSError:
                        break                                    # no flock on this file system
            yield
        finally:
            if fd is not None:
                os.close(fd)                                     # closing releases the flock


def _write_durably(path: Path, text: str) -> None:
    """``text`` into a new file ``path``, flushed to disk; on failure (a full disk) no file is left."""
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _parse(raw: bytes) -> dict:
    """The owner a lock file names: this version's JSON, or the older ``"<host> pid <pid> since <time>"``; {} for
    anything else (empty, not UTF-8, garbage)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    try:
        held = json.loads(text)
    except ValueError:
        host, sep, rest = text.partition(" pid ")
        pid, _, since = rest.partition(" since ")
        if not (sep and host.strip() and pid.isdigit()):
            return {}
        return {"host": host, "pid": int(pid), "since": since.strip()}
    if not isinstance(held, dict) or not isinstance(held.get("token"), str):
        return {}
    pid = held.get("pid")
    return {**held, "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None}


def _describe(held: dict, raw: bytes | None) -> str:
    """``"<host> pid <pid> since <time>"`` for a lock's owner, or what the file is when it names none."""
    if held:
        return f"{held.get('host', '?')} pid {held.get('pid', '?')} since {held.get('since', '?')}"
    if raw is None:
        return "another run"
    return "an empty lock file" if not raw else f"a lock file that is not one ({len(raw)} bytes)"
