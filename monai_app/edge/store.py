# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge's sample store: accepted samples, the review queue, corrections and the deployed models.

One folder holds it all (layout and schema: ``schema.py``).  The app records each case it writes: a confident
(``accepted``) case is a training sample at once, an unsure (``review``) one waits for the institution, whose
corrected mask makes it a ``corrected`` sample.  The cloud reads the samples as a MONAI datalist and sends back
the next model, which the model registry (``model_registry.py``) installs and activates.

Durability.  A row is the only thing that makes a file part of the store: every write puts its files in place
durably and commits their rows in one SQLite transaction, and opening the store deletes the files no committed
row references, so a process killed at any moment leaves no half entry, orphan file or duplicate.  The protocol
lives in one place, ``database.py``, which the case store here and the model registry both write through.  A
case is checked and its files encoded (``case_files.py``) before the write lock is taken.

The store must live on a local file system: ``flock`` and SQLite's WAL do not work on network shares.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from networks.durable import atomic_write_bytes
from operators.conventions import Route, is_valid_uid, utc_timestamp

from .case_files import case_payload, check_case, mask_png_bytes
from .database import StoreDatabase
from .model_registry import ModelRegistry
from .schema import (
    CASES_FOLDER,
    FILE_NAMES,
    REFERENCED_FILES_SQL,
    CaseRecord,
    CaseState,
    CorrectedMask,
    EdgeStoreError,
)

__all__ = ["EdgeStore", "EdgeStoreError", "CaseRecord", "CaseState", "CorrectedMask", "is_valid_uid", "mask_png_bytes"]

logger = logging.getLogger(__name__)


class EdgeStore:
    """The sample store and review queue at one edge site (see the module docstring for layout and guarantees).

    Use as a context manager, or call :meth:`close`: an open store holds a shared lock that keeps other
    processes from sweeping files it may be writing.  One instance may be shared by threads.  The deployed
    models are ``models`` (a :class:`ModelRegistry`); the model methods here are kept as the store's own.
    """

    def __init__(self, root, create: bool = True) -> None:
        self.root = Path(root).absolute()
        self._database = StoreDatabase(self.root, create=create)
        self.models = ModelRegistry(self._database)
        try:
            self._database.recover_if_alone(after_sweep=self.models.point_active_link)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._database.close()

    def __enter__(self) -> "EdgeStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ recording cases

    def record_case(
        self,
        *,
        sop_instance_uid: str,
        study_instance_uid: str,
        series_instance_uid: str,
        source_path,
        image: np.ndarray,
        mask: np.ndarray,
        confidence: float,
        route: str,
        model_version: str,
        seg_path=None,
        sr_path=None,
        overlay_path=None,
    ) -> CaseRecord:
        """Store one case the app has just written: an ``accepted`` training sample or a ``review`` request.

        Copies what it needs into the store (the app's OUT may be deleted later): the RGB image and the
        proposed mask as PNG (mask 0/255), the source DICOM, and the SEG, SR and overlay PNG where given.

        Idempotent: a SOP Instance UID the store already holds adds nothing, whatever model version sees it
        again (the first result is kept: an accepted sample is not second-guessed and a pending review is not
        replaced under the reviewer's hands).  The returned record then has ``added=False``.

        Raises ValueError for an argument that breaks the contract, naming it.
        """
        image, mask, confidence = check_case(
            sop_instance_uid, study_instance_uid, series_instance_uid, image, mask, confidence, route, model_version
        )
        existing = self.get_case(sop_instance_uid)
        if existing is not None:
            self._log_repeat(existing, model_version)
            return existing
        payload = case_payload(sop_instance_uid, source_path, image, mask, seg_path, sr_path, overlay_path)

        state = Route(route).value  # a case starts in the state of its route
        with self._database.write_transaction() as db:
            if db.execute("SELECT 1 FROM cases WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone():
                added = False  # another process stored it since the check above
            else:
                db.execute(
                    "INSERT INTO cases (sop_instance_uid, study_instance_uid, series_instance_uid, route, state,"
                    " confidence, model_version, rows, columns, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sop_instance_uid, study_instance_uid, series_instance_uid, state, state, confidence,
                     model_version, int(image.shape[0]), int(image.shape[1]), utc_timestamp()),
                )
                self._write_case_files(db, sop_instance_uid, payload)
                self._before_commit(sop_instance_uid)
                added = True
        record = self.get_case(sop_instance_uid)
        if not added:
            self._log_repeat(record, model_version)
            return record
        return CaseRecord(**{**record.__dict__, "added": True})

    def _before_commit(self, sop_instance_uid: str) -> None:
        """Hook between 'files in place' and COMMIT; the crash tests kill the process here."""

    @staticmethod
    def _log_repeat(existing: CaseRecord, model_version: str) -> None:
        if existing.model_version != model_version:
            logger.info(
                "edge store: %s already recorded by model %s (%s); keeping that, nothing recorded for model %s",
                existing.sop_instance_uid, existing.model_version, existing.state, model_version,
            )

    def _write_case_files(self, db: sqlite3.Connection, sop_instance_uid: str, payload: Dict[str, bytes]) -> None:
        """Inside a write transaction: put each file in place durably and add its row."""
        case_folder = self.root / CASES_FOLDER / sop_instance_uid
        self._database.put_files(case_folder, {FILE_NAMES[kind]: data for kind, data in payload.items()})
        for kind, data in payload.items():
            db.execute(
                "INSERT INTO files (sop_instance_uid, kind, relpath, sha256, size) VALUES (?, ?, ?, ?, ?)",
                (sop_instance_uid, kind, f"{CASES_FOLDER}/{sop_instance_uid}/{FILE_NAMES[kind]}",
                 hashlib.sha256(data).hexdigest(), len(data)),
            )

    # ------------------------------------------------------------------ reading

    def _record_from_row(self, row: sqlite3.Row) -> CaseRecord:
        files = {
            kind: self.root / relpath
            for kind, relpath in self._database.query(
                "SELECT kind, relpath FROM files WHERE sop_instance_uid = ?", (row["sop_instance_uid"],)
            )
        }
        return CaseRecord(**{key: row[key] for key in row.keys()}, files=files)

    def get_case(self, sop_instance_uid: str) -> Optional[CaseRecord]:
        with self._database.lock:
            rows = self._database.query("SELECT * FROM cases WHERE sop_instance_uid = ?", (sop_instance_uid,))
            return self._record_from_row(rows[0]) if rows else None

    def cases(self, states: Iterable[str] = tuple(CaseState)) -> List[CaseRecord]:
        """The cases in the given states, oldest first (then by UID, so listings are reproducible)."""
        states = tuple(str(state) for state in states)
        with self._database.lock:
            rows = self._database.query(
                f"SELECT * FROM cases WHERE state IN ({','.join('?' * len(states))}) ORDER BY recorded_at, sop_instance_uid",
                states,
            )
            return [self._record_from_row(row) for row in rows]

    def counts(self) -> Dict[str, int]:
        """Cases per state: ``accepted``, ``review`` (still waiting) and ``corrected``."""
        counts = {state.value: 0 for state in CaseState}
        for state, count in self._database.query("SELECT state, COUNT(*) FROM cases GROUP BY state"):
            counts[state] = count
        return counts

    def status(self) -> dict:
        """What ``python -m monai_app.edge status`` prints; ``model_score`` only once the install gate scored the
        active version (its latest score on the corrected cases)."""
        version = self.active_model_version()
        score = self.models.latest_score(version) if version is not None else None
        return {**self.counts(), "model_version": version, **({"model_score": score} if score else {})}

    def verify(self) -> List[str]:
        """Problems with the files the rows reference (missing, or changed since written); empty when sound."""
        problems = []
        for relpath, sha256 in self._database.query(REFERENCED_FILES_SQL):
            path = self.root / relpath
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
                problems.append(f"{path}: contents changed since it was stored")
        return problems

    # ------------------------------------------------------------------ corrections

    def commit_corrections(self, corrections: Sequence[CorrectedMask]) -> Tuple[List[CorrectedMask], List[Tuple[CorrectedMask, str]]]:
        """Store checked corrections as ``corrected`` samples and close their reviews, all in ONE transaction.

        Returns (committed, refused): a correction is refused, with the reason, when its case is no longer
        waiting (another import closed it meanwhile) or its mask no longer matches the case's size.
        A process killed part way commits none of them.
        """
        committed: List[CorrectedMask] = []
        refused: List[Tuple[CorrectedMask, str]] = []
        encoded = [(c, mask_png_bytes(c.mask), Path(c.seg_path).read_bytes() if c.seg_path else None) for c in corrections]
        with self._database.write_transaction() as db:
            for correction, mask_png, seg_bytes in encoded:
                row = db.execute(
                    "SELECT state, rows, columns FROM cases WHERE sop_instance_uid = ?", (correction.sop_instance_uid,)
                ).fetchone()
                if row is None or row["state"] != CaseState.REVIEW:
                    refused.append((correction, f"case {correction.sop_instance_uid} is not waiting for review"))
                    continue
                if tuple(correction.mask.shape) != (row["rows"], row["columns"]):
                    refused.append((correction, f"mask is {correction.mask.shape}, the source image {(row['rows'], row['columns'])}"))
                    continue
                payload = {"corrected_mask": mask_png}
                if seg_bytes is not None:
                    payload["corrected_seg"] = seg_bytes
                self._write_case_files(db, correction.sop_instance_uid, payload)
                db.execute(
                    "UPDATE cases SET state = ?, corrected_at = ?, correction_file = ? WHERE sop_instance_uid = ?",
                    (CaseState.CORRECTED.value, utc_timestamp(), correction.origin.name, correction.sop_instance_uid),
                )
                committed.append(correction)
            self._before_commit("corrections")
        return committed, refused

    # ------------------------------------------------------------------ for the institution and the cloud

    def write_datalist(self, path) -> dict:
        """Write a MONAI datalist of every accepted and corrected sample to ``path`` (atomically); return it.

        ``{"training": [{"image": abs PNG, "label": abs PNG mask 0/255}], "edge_samples": [...]}``: the training
        bundle reads images with ``networks.preprocessing.read_rgb`` and labels with ``read_mask``.  A corrected
        case's label is the reviewer's mask.  The training entries hold ``image`` and ``label`` only, exactly
        as ISIC's do: the bundle concatenates both lists, and a batch mixing entries with different keys cannot
        be collated.  Where each sample came from is in ``edge_samples``, index for index.
        """
        samples = self.cases((CaseState.ACCEPTED, CaseState.CORRECTED))
        datalist = {
            "description": f"dermseg edge samples from {self.root}: accepted by the model or corrected by a reviewer",
            "training": [{"image": str(case.files["image"]), "label": str(case.training_label)} for case in samples],
            "edge_samples": [
                {
                    "sop_instance_uid": case.sop_instance_uid,
                    "sample": case.state,
                    "model_version": case.model_version,
                    "confidence": case.confidence,
                }
                for case in samples
            ],
        }
        path = Path(path).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(datalist, indent=1) + "\n").encode())
        return datalist

    def export_review(self, out_folder) -> dict:
        """Write the review package for the institution into ``out_folder`` (new or empty); return its manifest.

        Per waiting case ``<SOPInstanceUID>/``: ``source.dcm``, ``proposed_seg.dcm`` (where the app wrote one),
        ``overlay.png``, ``proposed_mask.png``, ``image.png``; then ``manifest.json`` and ``README.txt`` (how to
        send corrections back).  The package appears complete or not at all (``review_package.py``).
        """
        from .review_package import export_review_package  # keeps the store module about storing

        return export_review_package(self.cases((CaseState.REVIEW,)), out_folder, self.active_model_version())

    # ------------------------------------------------------------------ models (see ModelRegistry)

    def active_model_version(self) -> Optional[str]:
        return self.models.active_version()

    def active_model_path(self) -> Optional[Path]:
        """The active model's folder ``models/<version>/``, or None before the first install (the app uses it
        when no ``-m`` is given)."""
        return self.models.active_path()

    def model_history(self) -> List[dict]:
        return self.models.history()

    def install_model(self, path) -> str:
        """Install an exported model (``model.ts``, or a folder with it and its ONNX exports) as the active one;
        returns its version (see :meth:`ModelRegistry.install`)."""
        return self.models.install(path)

    def rollback_model(self) -> str:
        """Make the previously active model active again; returns its version."""
        return self.models.rollback()
