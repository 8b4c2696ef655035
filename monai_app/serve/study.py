# Copyright (c) the dermseg contributors. Apache-2.0.
"""One round of one study: what to segment, the download, the app run, what the run produced.

What is segmented is decided from Orthanc's index, before anything is downloaded: a series whose Manufacturer is
ours (:data:`operators.conventions.MANUFACTURER`: our own SEG, SR and overlay coming back) is left alone, and of
the other instances only the photographs (:data:`operators.conventions.PHOTO_SOP_CLASSES`, read from Orthanc's
``SopClassUid`` metadata, no file read) are downloaded.  A CT of a thousand slices costs a thousand small
index look-ups, not a gigabyte of downloads; a round with no photograph is skipped without starting the app.

The app runs as ``python -m monai_app -i IN -o OUT [-m MODEL]``, a child process, rather than
``SkinLesionSegApp`` in this process: the Holoscan application object is built to run once per process (its
graph, executor and fragment state are not made to be composed again and again in one interpreter), a crash in
native code or an out-of-memory kill takes down one study's run and not the service, the memory of a run (about
0.9 GB) goes back to the system after every study, a SIGTERM can stop a run at any point without leaving the
service in an unknown state, and the service stays responsive (its ``/healthz`` answers while a study runs).  The
price is the app's start-up, about 8 s a study on two CPU cores (imports of torch, MONAI and Holoscan).  The
service process itself holds about 0.5 GB: checking the settings and the model imports ``operators.model``, and
with it torch and MONAI.
The child gets the service's environment, so every ``DERMSEG_*`` setting (and the edge store) applies as in any
run, except ``DERMSEG_SEND_TO``, which is emptied: the service sends by itself after it has recorded that the run
is complete (see :mod:`monai_app.serve` for why), with the same :func:`monai_app.pacs.send_outputs`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from operators.conventions import MANUFACTURER, PHOTO_SOP_CLASSES

from ..pacs import read_results
from ..settings import ENV_SEND_TO, ORTHANC_CREDENTIAL_VARIABLES
from .orthanc import OrthancClient
from .progress import Progress

__all__ = [
    "Plan", "app_command", "app_environment", "case_counts", "download", "plan_round", "prune_finished", "run_app",
]

_log = logging.getLogger(__package__)
REPO = Path(__file__).resolve().parents[2]
STACK_BYTES = 32 * 1024 * 1024  # Holoscan wants a 32 MiB stack (the Makefile's `ulimit -s 32768`)
_PR_SET_PDEATHSIG = 1


@dataclass
class Plan:
    photos: List[str] = field(default_factory=list)  # instance ids to segment
    others: List[str] = field(default_factory=list)  # instance ids with nothing to segment
    ours: int = 0  # of the others: our own results coming back

    @property
    def reason(self) -> str:
        """Why a round without photographs is skipped (counts only: no patient data)."""
        if not self.others:
            return "no new instances"
        foreign = len(self.others) - self.ours
        parts = [f"{self.ours} of our own result(s)"] if self.ours else []
        parts += [f"{foreign} instance(s) of other SOP classes"] if foreign else []
        return "nothing to segment: " + ", ".join(parts)


def plan_round(orthanc: OrthancClient, study_id: str, taken: set) -> Plan:
    """The study's instances no earlier round took, split into photographs to segment and the rest."""
    plan = Plan()
    for series in orthanc.study_series(study_id):
        new = [i for i in series.get("Instances", []) if i not in taken]
        if (series.get("MainDicomTags") or {}).get("Manufacturer", "").strip() == MANUFACTURER:
            plan.others += new
            plan.ours += len(new)
            continue
        for instance in new:
            (plan.photos if orthanc.sop_class_uid(instance) in PHOTO_SOP_CLASSES else plan.others).append(instance)
    return plan


def download(orthanc: OrthancClient, instances: List[str], folder: Path, stop: threading.Event) -> Optional[int]:
    """The instances' files into ``folder`` as ``<instance id>.dcm`` (kept from an earlier try of the round);
    returns the bytes downloaded, or None when a stop was asked for meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".*.part"):  # a download a kill interrupted
        leftover.unlink()
    size = 0
    for instance in instances:
        if stop.is_set():
            return None
        target = folder / f"{instance}.dcm"
        if not target.is_file():
            size += orthanc.download(instance, target)
    return size


def app_command(input_dir: Path, output_dir: Path, model: Optional[Path]) -> List[str]:
    """The MAP's own entry point; without ``-m`` the app picks its default model (the edge store's active model
    where there is one, else the bundle's export), exactly as it does when run by hand."""
    command = [sys.executable, "-m", "monai_app", "-i", str(input_dir), "-o", str(output_dir)]
    return command + (["-m", str(model)] if model is not None else [])


def app_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """The child's environment: the service's, without the Orthanc credentials (the app has no use for them) and
    with ``DERMSEG_SEND_TO`` set empty (empty, not unset, so that a MAP configuration file cannot set it again)."""
    child = {k: v for k, v in environ.items() if k not in ORTHANC_CREDENTIAL_VARIABLES}
    for name in ("HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH"):
        child.pop(name, None)
    child[ENV_SEND_TO] = ""
    return child


def run_app(command: List[str], env: Dict[str, str], log_path: Path, stop: threading.Event,
            grace_s: float = 20.0) -> Optional[int]:
    """Run the app to its end and return its exit status; None when ``stop`` was set meanwhile (the run is then
    stopped: SIGTERM, SIGKILL after ``grace_s``).  Its output goes to ``log_path``.  The child dies with the service
    (``PR_SET_PDEATHSIG``): after a ``kill -9`` of the service no orphaned run keeps writing into OUT while the
    restarted service runs the round again."""
    parent = os.getpid()
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: _child_setup(parent),
        )
    try:
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if stop.is_set():
                    break
        _log.info("stopping the app run (pid %d)", child.pid)
        _signal_group(child, signal.SIGTERM)
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(child, signal.SIGKILL)
            child.wait()
        return None
    except BaseException:
        _signal_group(child, signal.SIGKILL)
        child.wait()
        raise


def _child_setup(parent: int) -> None:  # runs in the child between fork and exec: no logging, no locks
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < STACK_BYTES:
        limit = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_STACK, (limit, hard))
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the service died before the line above took effect
        os._exit(1)


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass


def app_failure(returncode: int, log_path: Path, lines: int = 3) -> str:
    """What to record about a failed run: the exit status and the last lines of the app's log (the app keeps
    patient data out of its log at the default level)."""
    try:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        tail = []
    return f"the app exited with status {returncode}" + (": " + " | ".join(t.strip() for t in tail) if tail else "")


def case_counts(out_dir: Path) -> Dict[str, int]:
    """Per-status case counts and review routes from the run's results.json."""
    cases = read_results(out_dir).get("cases", [])
    return {
        "cases_ok": sum(c.get("status") == "ok" for c in cases),
        "cases_error": sum(c.get("status") == "error" for c in cases),
        "review": sum(c.get("route") == "review" for c in cases),
    }


def prune_finished(studies: Path, progress: Progress, keep_s: float) -> int:
    """Delete the folders ``studies/<study>/round-<n>`` of rounds finished more than ``keep_s`` seconds ago (their
    results and the app's log; the photos went after the send) and study folders left empty; returns how many
    rounds were deleted.  The round's record in the progress database stays, so a study is still never run
    twice.  The folders are walked rather than the database, so the cost follows what is kept on disk, not the
    service's whole history; a folder the database does not know, or a round still under way, is left alone."""
    cutoff = time.time() - keep_s
    pruned = 0
    for study in sorted(p for p in Path(studies).glob("*") if p.is_dir()):
        for folder in sorted(study.glob("round-*")):
            number = folder.name[len("round-"):]
            finished = progress.finished_at(study.name, int(number)) if number.isdigit() else None
            if finished is not None and finished <= cutoff:
                shutil.rmtree(folder)
                pruned += 1
        if not any(study.iterdir()):
            study.rmdir()
    return pruned
