# Copyright (c) the dermseg contributors. Apache-2.0.
"""The store under a real ``kill -9``: no half entry, no orphan file, no duplicate, and a re-run completes it.

A child process records cases in a loop; the parent SIGKILLs it after a random short delay, several times, and
checks the store after each kill.  Two more kills land deterministically in the worst window: after the files
were renamed into place and before the row commits (for a case, and for a batch of corrections).
"""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

from monai_app.edge import EdgeStore
from monai_app.edge.corrections import import_corrections

from _edge_helpers import case_pixels, case_uids

HELPERS = Path(__file__).with_name("_edge_helpers.py")
CASES = 200  # about a second of writing: long enough for every random kill to land inside it
REQUIRED_KINDS = {"image", "mask", "source"}


def _start_child(store_dir: Path, work: Path, kill_before_commit_at: int = -1) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, str(HELPERS), "record", str(store_dir), str(work), str(CASES), str(kill_before_commit_at)],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    return child


def assert_store_consistent(store_dir: Path) -> int:
    """Open the store (which sweeps) and check rows against files both ways; return the number of cases."""
    with EdgeStore(store_dir) as store:
        assert store.verify() == []  # every referenced file exists, with the bytes it was stored with
    db = sqlite3.connect(store_dir / "edge.sqlite")
    try:
        cases = [row[0] for row in db.execute("SELECT sop_instance_uid FROM cases")]
        files = db.execute("SELECT sop_instance_uid, kind, relpath, sha256 FROM files").fetchall()
    finally:
        db.close()
    assert len(cases) == len(set(cases))
    kinds = {}
    for uid, kind, relpath, sha256 in files:
        kinds.setdefault(uid, set()).add(kind)
        assert hashlib.sha256((store_dir / relpath).read_bytes()).hexdigest() == sha256
    assert set(kinds) == set(cases)
    assert all(REQUIRED_KINDS <= kinds[uid] for uid in cases), "a case row without all its files"
    on_disk = {p.relative_to(store_dir).as_posix() for p in (store_dir / "cases").rglob("*") if p.is_file()}
    assert on_disk == {relpath for _, _, relpath, _ in files}, "a file without a row (or a temporary file)"
    assert {p.name for p in (store_dir / "cases").iterdir()} == set(cases), "a case folder without a row"
    return len(cases)


def test_random_kills_while_recording_leave_a_consistent_store(tmp_path):
    store_dir, work = tmp_path / "store", tmp_path / "work"
    rng = random.Random(20261124)
    counts = []
    for _ in range(6):
        child = _start_child(store_dir, work)
        time.sleep(rng.uniform(0.0, 0.2))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
        counts.append(assert_store_consistent(store_dir))
    assert counts == sorted(counts)  # nothing committed is ever lost
    assert any(0 < count < CASES for count in counts), f"no kill landed while cases were being written: {counts}"

    child = _start_child(store_dir, work)  # the re-run completes the set, adding each case exactly once
    assert child.wait(timeout=120) == 0
    child.stdout.close()
    assert assert_store_consistent(store_dir) == CASES
    with EdgeStore(store_dir) as store:
        assert store.counts() == {"accepted": CASES // 2, "review": CASES // 2, "corrected": 0}


def test_two_writers_at_once_store_each_case_once(tmp_path):
    store_dir, work = tmp_path / "store", tmp_path / "work"
    first = _start_child(store_dir, work)  # builds the sources, so the second finds them
    second = _start_child(store_dir, work)
    assert first.wait(timeout=120) == 0 and second.wait(timeout=120) == 0
    first.stdout.close(), second.stdout.close()
    assert assert_store_consistent(store_dir) == CASES


def test_kill_between_files_in_place_and_commit(tmp_path):
    store_dir, work = tmp_path / "store", tmp_path / "work"
    child = _start_child(store_dir, work, kill_before_commit_at=3)
    assert child.wait(timeout=60) == -signal.SIGKILL
    child.stdout.close()
    # the files of case 3 were renamed into place; its row never committed
    assert (store_dir / "cases" / case_uids(3)[2] / "image.png").is_file()
    assert assert_store_consistent(store_dir) == 3  # opening swept them
    assert not (store_dir / "cases" / case_uids(3)[2]).exists()

    child = _start_child(store_dir, work)
    assert child.wait(timeout=120) == 0
    child.stdout.close()
    assert assert_store_consistent(store_dir) == CASES


def test_killed_import_of_corrections_imports_nothing(tmp_path):
    store_dir, work, corrections = tmp_path / "store", tmp_path / "work", tmp_path / "corrections"
    child = _start_child(store_dir, work)
    assert child.wait(timeout=120) == 0
    child.stdout.close()
    corrections.mkdir()
    waiting = [index for index in range(CASES) if index % 2 == 1][:4]
    for index in waiting:
        PIL.Image.fromarray(case_pixels(index)[1] * 255).save(corrections / f"{case_uids(index)[2]}.png")

    script = (
        "import os, signal, sys\n"
        "from monai_app.edge.store import EdgeStore\n"
        "from monai_app.edge.corrections import import_corrections\n"
        "class Crashing(EdgeStore):\n"
        "    def _before_commit(self, what):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "import_corrections(Crashing(sys.argv[1]), sys.argv[2])\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(store_dir), str(corrections)], cwd=HELPERS.parents[1])
    assert killed.returncode == -signal.SIGKILL
    assert (store_dir / "cases" / case_uids(waiting[0])[2] / "corrected_mask.png").exists()  # in place, uncommitted

    assert assert_store_consistent(store_dir) == CASES
    with EdgeStore(store_dir) as store:
        assert store.counts()["corrected"] == 0
        assert not (store_dir / "cases" / case_uids(waiting[0])[2] / "corrected_mask.png").exists()
        report = import_corrections(store, corrections)  # the re-run imports them all
        assert report.ok and len(report.imported) == len(waiting)
        assert store.counts()["corrected"] == len(waiting)
        np.testing.assert_array_equal(
            np.asarray(PIL.Image.open(store.get_case(case_uids(waiting[0])[2]).training_label)) > 0,
            case_pixels(waiting[0])[1] > 0,
        )
