# Copyright (c) the dermseg contributors. Apache-2.0.
"""The record of what was sent where: results.json's top-level ``"transfers"`` list, one record per (object,
target).

A failed send loses nothing: the files stay in OUT and their records say what failed and why, so a later send
sends exactly what is not recorded as sent.  The records are merged into results.json under an exclusive lock on
OUT (two senders, the app and a retry from cron, say, never interleave) and written atomically after each target,
so a crash keeps what was recorded before it.  The app's ``"cases"`` are never changed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

from operators import results
from operators.conventions import utc_timestamp

from .outputs import DicomObject, read_results
from .transport import Outcome, Target

__all__ = ["FAILED", "SENT", "OutputFolderLock", "is_sent", "recorded_transfers", "save_transfers", "transfer_record"]

SENT = "sent"
FAILED = "failed"

Key = Tuple[Optional[str], Optional[str]]  # (path, target label)


def recorded_transfers(results: dict) -> Dict[Key, dict]:
    """The transfer records of a results.json document, by (path, target label)."""
    return {(r.get("path"), r.get("target")): r for r in results.get("transfers", []) if isinstance(r, dict)}


def is_sent(record: Optional[dict], obj: DicomObject) -> bool:
    """Sent to this target already, and the file still holds the instance that was sent (a rerun of the app into
    the same OUT writes new instances at the same paths, and those must be sent)."""
    return bool(record) and record.get("status") == SENT and record.get("sop_instance_uid") == obj.sop_instance_uid


def transfer_record(
    previous: Optional[dict], obj: DicomObject, target: Target, outcome: Outcome, attempts: int
) -> dict:
    """The record of this call's attempts; ``attempts`` counts on from ``previous`` for the same instance."""
    same_instance = previous and previous.get("sop_instance_uid") == obj.sop_instance_uid
    return {
        "path": obj.path,
        "sop_class_uid": obj.sop_class_uid,
        "sop_instance_uid": obj.sop_instance_uid,
        "target": target.label,
        "status": SENT if outcome.sent else FAILED,
        "error": outcome.error,
        "attempts": (previous.get("attempts", 0) if same_instance else 0) + attempts,
        "time": utc_timestamp(),
    }


def save_transfers(out_dir: Path, records: Dict[Key, dict]) -> None:
    """Merge ``records`` into results.json's ``transfers``, re-reading the file so nothing else in it is lost."""
    document = read_results(out_dir)
    merged = recorded_transfers(document)
    merged.update(records)
    document["transfers"] = list(merged.values())
    results.write_document(out_dir, document)


class OutputFolderLock:
    """An exclusive ``flock`` on OUT itself, so two senders (the app and a retry from cron, say) never send the
    same objects at once or overwrite each other's records.  Locking the folder leaves no lock file behind."""

    def __init__(self, out_dir: Path):
        self._descriptor = os.open(out_dir, os.O_RDONLY)

    def __enter__(self):
        fcntl.flock(self._descriptor, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info):
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
