"""Hand-in sets: the files one checkpoint makes, written as one set, each knowing the run and step that made it.

A notebook (or the CLI) writes its hand-in files through a ``HandInSet``: ``hand_in.path("result_mnist.jpg")``
is where to write a file now, a staging folder beside the outputs (``output_dir/.handin-<id>/``), and
``hand_in.commit()`` moves the whole set into ``output_dir`` and records, for every file, the checkpoint's
run id and step and the file's SHA-256 in ``output_dir/provenance.json``.

An interruption (Ctrl-C while sampling, a disconnect) before ``commit`` leaves the previous set as it was;
one during ``commit`` is finished by the next ``HandInSet`` or export of that folder (the commit writes its
list of files first, then moves them: a write-ahead journal). ``provenance()`` reads the records back;
``utils.export`` refuses a set whose files come from different checkpoints, or were changed afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "provenance.json"        # in output_dir: {"files": {name: {run_id, step, sha256, time, written}}}
STAGE_PREFIX = ".handin-"           # output_dir/.handin-<id>/: a set being written
JOURNAL = ".commit.json"            # in a stage: the set's records, written when it is committed
OWNER = ".owner.json"               # in a stage: which process writes it, from which checkpoint
MIN_FREE_BYTES = 32 * 2 ** 20       # below this, writing a set is refused before it starts


class HandInError(RuntimeError):
    """The hand-in set is incomplete, mixed or wrong, or cannot be written. The message says what to do."""


@dataclass(frozen=True)
class Source:
    """The checkpoint a hand-in file was made from: its training run and step."""

    run_id: str
    step: int

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.step}"


def source_of(made_from) -> Source:
    """A ``Source`` from anything with ``run_id`` and ``step`` (a ``TrainResult``), or a Source itself."""
    if isinstance(made_from, Source):
        return made_from
    run_id, step = getattr(made_from, "run_id", ""), getattr(made_from, "step", None)
    if not run_id or step is None:
        raise ValueError(f"{made_from!r:.80} names no checkpoint (run_id and step): pass the result of training.train.")
    return Source(run_id, int(step))


class HandInSet:
    """The hand-in files of one checkpoint (``made_from``: a ``TrainResult`` or a ``Source``) in ``output_dir``.

    ``path(name)`` gives where to write ``name`` (a file, or a folder such as ``"test"``); ``commit()`` puts
    everything written so far in place as one set and returns the final paths. ``guard``: a context manager
    factory held while committing (the CLI's ``TrainingLock.owned``: a run that lost its folder writes nothing).
    """

    _mine: set[str] = set()   # stages this process is writing

    def __init__(self, output_dir: str | Path, made_from, *, guard=None):
        self.output_dir = Path(output_dir)
        self.source = source_of(made_from)
        self.guard = guard
        self.stage: Path | None = None
        finish_pending(self.output_dir, supersede=True)

    def path(self, name: str) -> Path:
        """Where to write the hand-in file (or folder) ``name`` now; it is handed in at ``commit()``."""
        if self.stage is None or not self.stage.is_dir():
            self.stage = self._new_stage()
        target = self.stage / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> list[Path]:
        """Hand in every file written since the last commit, as one set: each file's record (run, step,
        SHA-256) goes to the journal, then the files move into ``output_dir`` and the records into its
        ``provenance.json``. Returns the files' final paths."""
        stage, self.stage = self.stage, None
        if stage is None or not stage.is_dir():
            return []
        written = time.time()
        records = {p.relative_to(stage).as_posix(): {"run_id": self.source.run_id, "step": self.source.step,
                                                     "sha256": file_sha256(p), "time": written,
                                                     "written": time.strftime("%Y-%m-%d %H:%M:%S")}
                   for p in sorted(stage.rglob("*")) if p.is_file() and p.name not in (JOURNAL, OWNER)}
        try:
            with self.guard() if self.guard is not None else contextlib.nullcontext():
                _write_json(stage / JOURNAL, {"files": records})     # the commit point
                _roll_forward(self.output_dir, stage)
        except OSError as err:
            raise HandInError(_unwritable(self.output_dir, err, "The previous hand-in set there is kept.")) from err
        finally:
            HandInSet._mine.discard(stage.name)
        return [self.output_dir / name for name in records]

    def _new_stage(self) -> Path:
        _check_free_space(self.output_dir)
        stage = self.output_dir / f"{STAGE_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            stage.mkdir(parents=True)
            _write_json(stage / OWNER, {"host": socket.gethostname(), "pid": os.getpid(),
                                        "run_id": self.source.run_id, "step": self.source.step})
        except OSError as err:
            shutil.rmtree(stage, ignore_errors=True)
            raise HandInError(_unwritable(self.output_dir, err, "Nothing was written.")) from err
        HandInSet._mine.add(stage.name)
        return stage


# ----------------------------------------------------------------------------- reading back
def provenance(output_dir: str | Path) -> dict[str, dict]:
    """The records of ``output_dir``'s hand-in files (name → run_id, step, sha256, time), after finishing an
    interrupted commit; {} when none were recorded."""
    output_dir = Path(output_dir)
    finish_pending(output_dir)
    try:
        manifest = json.loads((output_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return files if isinstance(files, dict) else {}


def unfinished(output_dir: str | Path) -> list[tuple[Source, list[str]]]:
    """Sets started in ``output_dir`` but never committed (interrupted): their source and the files written."""
    out = []
    for stage in _stages(Path(output_dir)):
        if (stage / JOURNAL).exists():
            continue
        try:
            owner = json.loads((stage / OWNER).read_text())
            source = Source(owner["run_id"], int(owner["step"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        names = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*")
                       if p.is_file() and p.name not in (JOURNAL, OWNER))
        if names:
            out.append((source, names))
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the journal
def finish_pending(output_dir: Path, *, supersede: bool = False) -> None:
    """Finish every committed set whose files were not all moved yet (an interrupted commit), and remove the
    stages nobody will commit: of a process that has ended, a day old, or (``supersede``, a new set of this
    process) this process's earlier unfinished sets."""
    for stage in _stages(output_dir):
        if (stage / JOURNAL).exists():
            with contextlib.suppress(OSError, ValueError):
                _roll_forward(output_dir, stage)
        elif _abandoned(stage, supersede):
            shutil.rmtree(stage, ignore_errors=True)


def _stages(output_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in output_dir.glob(f"{STAGE_PREFIX}*") if p.is_dir())
    except OSError:
        return []


def _abandoned(stage: Path, supersede: bool) -> bool:
    try:
        owner = json.loads((stage / OWNER).read_text())
        age = time.time() - stage.stat().st_mtime
    except (OSError, ValueError):
        return True
    if age > 24 * 3600:
        return True
    if owner.get("host") != socket.gethostname():
        return False
    if owner.get("pid") == os.getpid():
        return supersede and stage.name in HandInSet._mine
    try:
        os.kill(int(owner.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (OSError, TypeError, ValueError, OverflowError):
        pass
    return False


def _roll_forward(output_dir: Path, stage: Path) -> None:
    """Move a committed stage's files into ``output_dir``, merge its records into the manifest, remove it."""
    records = json.loads((stage / JOURNAL).read_text())["files"]
    for name in records:
        src, dst = stage / name, output_dir / name
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):        # another process finishing the same commit
                os.replace(src, dst)
    try:
        manifest = json.loads((output_dir / MANIFEST).read_text())
        files = manifest["files"] if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else {}
    except (OSError, ValueError):
        files = {}
    files.update(records)
    _write_json(output_dir / MANIFEST, {"format": 1, "files": files})
    shutil.rmtree(stage, ignore_errors=True)


def _write_json(path: Path, obj) -> None:
    """``obj`` as JSON at ``path``, atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_free_space(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(output_dir).free
    except OSError as err:
        raise HandInError(_unwritable(output_dir, err, "Nothing was written.")) from err
    if free < MIN_FREE_BYTES:
        raise HandInError(_unwritable(output_dir, OSError(errno.ENOSPC, f"only {free / 2 ** 20:.1f} MB free"),
                                      "Nothing was written; the hand-in files already there are kept."))


def _unwritable(output_dir: Path, err: OSError, kept: str) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"Cannot write the hand-in files to output_dir={str(output_dir)!r}: its disk is full "
                f"({err.strerror or err}). {kept} Free space there (on Colab: empty Drive's trash, or check the "
                "quota) or set output_dir (or workdir) to a folder on another disk, then run the cell again.")
    return (f"Cannot write the hand-in files to output_dir={str(output_dir)!r} ({err.strerror or err}). {kept} "
            "Choose a folder you can write to (output_dir or workdir), then run the cell again.")
