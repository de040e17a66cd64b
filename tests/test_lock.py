"""The training lock of a checkpoint folder (utils.lock): atomic under simultaneous starts, a holder paused past
the staleness writes nothing once it lost the lock, and lock files that are no locks never block a run."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.lock import CheckpointError, LockLost, TrainingLock

ROOT = Path(__file__).resolve().parent.parent

# A holder in its own process: takes the lock, then writes "A <n>" to last.txt under lock.owned() for each line
# read from stdin (a checkpoint write), printing what happened.
HOLDER = """
import sys
from pathlib import Path
from utils.lock import LockLost, TrainingLock
folder = Path(sys.argv[1])
with TrainingLock(folder) as lock:
    print("holding", flush=True)
    for n, _ in enumerate(sys.stdin, 1):
        try:
            with lock.owned():
                (folder / "last.txt").write_text(f"A {n}")
        except LockLost as err:
            print("LOST", err, flush=True)
            sys.exit(3)
        print("wrote", n, flush=True)
"""


def _ended_pid() -> int:
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def test_a_holder_paused_past_the_staleness_finds_its_lock_taken_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(TrainingLock, "STALE_SECONDS", 0.5)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "holding"
        holder.stdin.write("checkpoint\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "wrote 1"
        os.kill(holder.pid, signal.SIGSTOP)          # Ctrl-Z, a suspended laptop, a frozen Colab tab
        time.sleep(1.0)                              # past the staleness: its lock is no longer renewed
        with TrainingLock(tmp_path) as second:       # a second run takes the folder over and trains
            assert second.took_over and "not renewed" in second.took_over
            (tmp_path / "last.txt").write_text("B 1")
            os.kill(holder.pid, signal.SIGCONT)      # the first one comes back and reaches its next checkpoint
            holder.stdin.write("checkpoint\n")
            holder.stdin.flush()
            out, _ = holder.communicate(timeout=30)
            assert holder.returncode == 3, out
            assert "no longer holds the lock" in out and "stopped without writing" in out
            assert (tmp_path / "last.txt").read_text() == "B 1"             # nothing of the first run after the pause
            assert json.loads(second.path.read_text())["token"] == second.token   # and the lock is still the second's
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait()


def _racer(folders, index, start, results):
    """One of several processes that all try to take the same lock at the same instant, trial after trial
    (a folder each); a lock taken is held until every trial is over, so a later try cannot count as a race."""
    held = []
    for trial, folder in enumerate(folders):
        start.wait()
        lock = TrainingLock(folder)
        try:
            held.append(lock.__enter__())
        except CheckpointError:
            pass
        results.put((trial, index, bool(held) and held[-1] is lock))
    start.wait()                                     # every trial counted: let go
    for lock in held:
        lock.__exit__(None, None, None)


@pytest.mark.parametrize("stale", ["ended process", "not renewed"])
def test_simultaneous_starts_over_a_stale_lock_never_give_two_holders(tmp_path, stale):
    trials, racers = 100, 4                          # 100 trials here, 100 in the other case: 200 in all
    folders, dead = [tmp_path / f"trial{t}" for t in range(trials)], _ended_pid()
    for folder in folders:
        folder.mkdir()
        lock = folder / "training.lock"
        if stale == "ended process":
            lock.write_text(f"{socket.gethostname()} pid {dead} since 2026-12-01 10:00:00")
        else:
            lock.write_text(json.dumps({"token": "old", "host": "another-machine", "pid": 1, "since": "2026-12-01"}))
            os.utime(lock, (time.time() - 3600, time.time() - 3600))
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(racers + 1), context.Queue()
    workers = [context.Process(target=_racer, args=(folders, i, start, results)) for i in range(racers)]
    for worker in workers:
        worker.start()
    holders = []
    try:
        for _ in range(trials):
            start.wait(timeout=30)
            holders.append(sum(results.get(timeout=30)[2] for _ in range(racers)))
        start.wait(timeout=30)
    finally:
        for worker in workers:
            worker.join(timeout=30)
    print(f"{stale}: {trials} trials of {racers} simultaneous starts, holders per trial: "
          f"{ {n: holders.count(n) for n in sorted(set(holders))} }")
    assert holders == [1] * trials                   # never two holders, and the stale lock is always taken
    assert all(not (folder / "training.lock").exists() for folder in folders)   # each holder removed its own


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00 not utf-8", b"garbage", b'{"token": 3}'],
                         ids=["empty", "not-utf8", "garbage", "json-without-owner"])
def test_a_lock_file_that_is_no_lock_is_taken_over_and_said_so(tmp_path, content):
    lock = tmp_path / "training.lock"
    lock.write_bytes(content)
    os.utime(lock, (time.time() - 11, time.time() - 11))   # an empty file is given 2 s to be written
    with TrainingLock(tmp_path) as taken:
        assert taken.took_over.startswith(("an empty lock file", "a lock file that is not one"))
        assert json.loads(lock.read_text())["token"] == taken.token
    assert not lock.exists()


def test_a_lock_that_cannot_be_written_leaves_no_lock_file_and_says_so(tmp_path):
    # A real failing write: the process may write no byte (RLIMIT_FSIZE = 0), like a disk that is full
    script = ("import resource, signal, sys\nfrom utils.lock import CheckpointError, TrainingLock\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
              "try:\n    TrainingLock(sys.argv[1]).__enter__()\nexcept CheckpointError as err:\n    print(err)\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert "Cannot write to checkpoint_dir" in run.stdout, run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []            # no 0-byte lock to block the next run, no temp file
    with TrainingLock(tmp_path) as lock:             # and the next run starts at once
        assert lock.took_over is None


def test_a_full_disk_is_named_as_one(tmp_path, monkeypatch):
    import errno

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(CheckpointError, match=r"checkpoint_dir=.*its disk is full"):
        TrainingLock(tmp_path).__enter__()
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_second_lock_in_the_same_process_is_refused_while_the_first_is_held(tmp_path):
    with TrainingLock(tmp_path):
        with pytest.raises(CheckpointError, match="Another run is training"):
            TrainingLock(tmp_path).__enter__()


def test_a_lock_in_the_older_text_format_is_still_understood(tmp_path):
    (tmp_path / "training.lock").write_text(f"{socket.gethostname()} pid {_ended_pid()} since 2026-12-01 10:00:00")
    with TrainingLock(tmp_path) as lock:
        assert "its process has ended" in lock.took_over


def test_verify_says_why_when_the_lock_was_replaced(tmp_path):
    with TrainingLock(tmp_path) as lock:
        lock.path.write_text(json.dumps({"token": "other", "host": "colab-2", "pid": 7, "since": "2026-12-01 10:00"}))
        with pytest.raises(LockLost, match="colab-2 pid 7 .* holds it now"):
            lock.verify()
