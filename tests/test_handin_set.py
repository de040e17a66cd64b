"""Hand-in sets (utils.handin_set): written as one set from one checkpoint, so an interruption leaves the old set or the
new one, and every file records the run and step that made it."""

import json
import os

import pytest

from utils import handin_set
from utils.lock import LockLost, TrainingLock

OLD, NEW = handin_set.Source("run-old", 40), handin_set.Source("run-new", 80)
NAMES = ("loss_mnist.jpg", "result_mnist.jpg", "mnist.gif")


def _write(hand_in, names=NAMES, text="new"):
    for name in names:
        hand_in.path(name).write_text(f"{text} {name}")


def _files(out):
    return {name: (out / name).read_text() for name in NAMES if (out / name).exists()}


def test_a_set_interrupted_before_it_is_handed_in_leaves_the_previous_set_whole(tmp_path):
    old = handin_set.HandInSet(tmp_path, OLD)
    _write(old, text="old")
    assert old.commit() == [tmp_path / name for name in sorted(NAMES)]
    new = handin_set.HandInSet(tmp_path, NEW)
    _write(new, NAMES[:1])                     # the loss plot of the new run, then Ctrl-C while sampling
    assert _files(tmp_path) == {name: f"old {name}" for name in NAMES}
    assert {r["run_id"] for r in handin_set.provenance(tmp_path).values()} == {"run-old"}
    assert handin_set.unfinished(tmp_path) == [(NEW, ["loss_mnist.jpg"])]


def test_a_commit_interrupted_midway_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    old = handin_set.HandInSet(tmp_path, OLD)
    _write(old, text="old")
    old.commit()
    new = handin_set.HandInSet(tmp_path, NEW)
    _write(new)
    real_replace, moves = os.replace, []

    def interrupted_after_one_file(src, dst):
        if str(src).endswith(".jpg") or str(src).endswith(".gif"):
            moves.append(src)
            if len(moves) == 2:
                raise KeyboardInterrupt         # Ctrl-C between two files of the set
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        new.commit()
    monkeypatch.undo()
    records = handin_set.provenance(tmp_path)      # reading the folder finishes the commit: the new set, whole
    assert _files(tmp_path) == {name: f"new {name}" for name in NAMES}
    assert {records[name]["run_id"] for name in NAMES} == {"run-new"} and handin_set.unfinished(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_each_file_records_its_checkpoint_and_content(tmp_path):
    hand_in = handin_set.HandInSet(tmp_path, NEW)
    _write(hand_in)
    hand_in.commit()
    record = json.loads((tmp_path / "provenance.json").read_text())["files"]["result_mnist.jpg"]
    assert (record["run_id"], record["step"]) == ("run-new", 80)
    assert record["sha256"] == handin_set.file_sha256(tmp_path / "result_mnist.jpg")


def test_a_full_output_disk_is_named_before_anything_is_written(tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2 ** 30, 10 * 2 ** 30, 2 ** 20))
    hand_in = handin_set.HandInSet(tmp_path / "outputs", NEW)
    with pytest.raises(handin_set.HandInError, match=r"output_dir=.*outputs'.*its disk is full \(only 1\.0 MB free\)"):
        hand_in.path("result_mnist.jpg")
    assert list((tmp_path / "outputs").iterdir()) == []


def test_a_run_that_lost_its_lock_hands_in_nothing(tmp_path):
    out, checkpoints = tmp_path / "outputs", tmp_path / "checkpoints"
    with TrainingLock(checkpoints) as lock:
        hand_in = handin_set.HandInSet(out, NEW, guard=lock.owned)
        _write(hand_in)
        lock.path.write_text(json.dumps({"token": "other", "host": "colab-2", "pid": 1, "since": "2026-12-01"}))
        with pytest.raises(LockLost):
            hand_in.commit()
    assert _files(out) == {} and handin_set.provenance(out) == {}
