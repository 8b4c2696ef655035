# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge's sample store: accepted samples, the review queue, corrections and the deployed models.

Layout of a store folder ``DIR``::

    DIR/edge.sqlite              the database (WAL): one row per case, one per stored file, the models
    DIR/.lock                    advisory lock: who may run the recovery sweep
    DIR/cases/<SOPInstanceUID>/  image.png, mask.png (0/255), source.dcm, [seg.dcm, sr.dcm, overlay.png],
                                 after a review: corrected_mask.png (0/255), [corrected_seg.dcm]
    DIR/models/<version>/model.ts  [model.onnx] [model_int8.onnx]
    DIR/models/active ->         <version> (a convenience link; the database says which model is active)

Durability.  A row is the only thing that makes a file part of the store.  Every write goes: encode in memory,
take SQLite's write lock (``BEGIN IMMEDIATE``), write each file under a temporary name in its final folder,
fsync, rename into place, fsync the folder, insert the rows, commit.  A process killed at any moment therefore
leaves either the committed rows with all their files, or no row and some unreferenced files; opening the store
deletes those (the recovery sweep), so there is never a half entry, an orphan file or a duplicate (the source
SOP Instance UID is the primary key).  The sweep runs only when no other process has the store open (an
exclusive ``flock`` on ``DIR/.lock``), so it can never delete a file another process is about to commit.

The store must live on a local file system: ``flock`` and SQLite's WAL do not work on network shares.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import PIL.Image

from networks.durable import atomic_write_bytes, partial_name

__all__ = [
    "EdgeStore",
    "EdgeStoreError",
    "CaseRecord",
    "CorrectedMask",
    "ROUTE_ACCEPTED",
    "ROUTE_REVIEW",
    "STATE_CORRECTED",
    "is_valid_uid",
    "read_model_metadata",
]

logger = logging.getLogger(__name__)

ROUTE_ACCEPTED = "accepted"
ROUTE_REVIEW = "review"
STATE_CORRECTED = "corrected"  # a review case whose corrected mask came back
ROUTES = (ROUTE_ACCEPTED, ROUTE_REVIEW)

DATABASE_NAME = "edge.sqlite"
LOCK_NAME = ".lock"
CASES_FOLDER = "cases"
MODELS_FOLDER = "models"
ACTIVE_LINK = "active"
MODEL_FILE_NAME = "model.ts"
ONNX_FILE_NAME = "model.onnx"
INT8_ONNX_FILE_NAME = "model_int8.onnx"
ONNX_FILE_NAMES = (ONNX_FILE_NAME, INT8_ONNX_FILE_NAME)  # the exports installed beside model.ts where present
SCHEMA_VERSION = 2  # 2: model_exports (a version's ONNX exports beside its TorchScript); 1 opens and migrates

# What a case's files are called inside cases/<SOPInstanceUID>/ (kind -> file name).
FILE_NAMES: Mapping[str, str] = {
    "image": "image.png",
    "mask": "mask.png",
    "source": "source.dcm",
    "seg": "seg.dcm",
    "sr": "sr.dcm",
    "overlay": "overlay.png",
    "corrected_mask": "corrected_mask.png",
    "corrected_seg": "corrected_seg.dcm",
}

# DICOM PS3.5 9.1: digits and dots, at most 64 characters.  A UID names a folder, so nothing else may pass.
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# A model version names a folder too: no separators, no leading dot.
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    sop_instance_uid    TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    route               TEXT NOT NULL CHECK (route IN ('accepted', 'review')),
    state               TEXT NOT NULL CHECK (state IN ('accepted', 'review', 'corrected')),
    confidence          REAL NOT NULL,
    model_version       TEXT NOT NULL,
    rows                INTEGER NOT NULL,
    columns             INTEGER NOT NULL,
    recorded_at         TEXT NOT NULL,
    corrected_at        TEXT,
    correction_file     TEXT
);
CREATE INDEX IF NOT EXISTS cases_by_state ON cases (state);
CREATE TABLE IF NOT EXISTS files (
    sop_instance_uid TEXT NOT NULL REFERENCES cases (sop_instance_uid),
    kind             TEXT NOT NULL,
    relpath          TEXT NOT NULL UNIQUE,
    sha256           TEXT NOT NULL,
    size             INTEGER NOT NULL,
    PRIMARY KEY (sop_instance_uid, kind)
);
CREATE TABLE IF NOT EXISTS models (
    version      TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    relpath      TEXT NOT NULL UNIQUE,
    sha256       TEXT NOT NULL,
    installed_at TEXT NOT NULL
);
-- Further exports of an installed version (its ONNX model), served instead of the TorchScript where faster.
CREATE TABLE IF NOT EXISTS model_exports (
    version TEXT NOT NULL REFERENCES models (version),
    relpath TEXT NOT NULL UNIQUE,
    sha256  TEXT NOT NULL
);
-- The deployed models as a stack: install pushes, rollback pops, the top is the active model.
CREATE TABLE IF NOT EXISTS model_stack (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    version      TEXT NOT NULL REFERENCES models (version),
    activated_at TEXT NOT NULL
);
-- Who did what to the models, for the site's audit trail.
CREATE TABLE IF NOT EXISTS model_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    action  TEXT NOT NULL CHECK (action IN ('install', 'activate', 'rollback')),
    version TEXT NOT NULL,
    at      TEXT NOT NULL
);
"""


class EdgeStoreError(Exception):
    """A request the store refuses, with a message a person can act on."""


def is_valid_uid(uid: object) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and _UID_PATTERN.fullmatch(uid) is not None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """A mask as the bundle and ISIC store it: 8-bit PNG, 0 outside, 255 lesion."""
    return _png_bytes(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))


def _fsync_folder(folder: Path) -> None:
    """Make renames and new entries in ``folder`` durable (a rename is only safe once its folder is synced)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_model_metadata(path) -> dict:
    """The ``metadata.json`` a TorchScript export embeds (MONAI's ``ckpt_export`` writes it), as a dict.

    Loading the archive with TorchScript also proves it is one (no pickle is ever unpickled).
    """
    import torch  # only installing a model needs torch; the app has it loaded already

    extra_files = {"metadata.json": ""}
    try:
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    except Exception as exc:  # torch raises RuntimeError, ValueError or its own types for a bad archive
        raise EdgeStoreError(f"{path}: not a TorchScript model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        metadata = json.loads(extra_files["metadata.json"] or "{}")
    except ValueError as exc:
        raise EdgeStoreError(f"{path}: its metadata.json is not JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise EdgeStoreError(f"{path}: its metadata.json is not a JSON object")
    return metadata


def read_onnx_version(path) -> str:
    """The ``version`` in an ONNX export's embedded ``metadata.json``; loading it in ONNX Runtime proves it is one."""
    from operators.model import load_model  # only installing a model needs it; the app has it loaded already

    try:
        _, info = load_model(path, "cpu")
    except ValueError as exc:
        raise EdgeStoreError(str(exc)) from None
    return info.version


def model_exports(path) -> Tuple[Path, List[Path]]:
    """The TorchScript file and the ONNX files (float and int8, those present) to install from ``path``.

    ``path`` is a TorchScript file, or a folder holding ``model.ts`` and optionally ``model.onnx`` and
    ``model_int8.onnx`` (the bundle's ``models/`` folder: its other files, weights and checkpoints, are not
    installed).
    """
    path = Path(path)
    if path.is_file():
        return path, []
    if path.is_dir():
        torchscript = path / MODEL_FILE_NAME
        if not torchscript.is_file():
            raise EdgeStoreError(f"{path}: a model folder must hold {MODEL_FILE_NAME} (and may hold {', '.join(ONNX_FILE_NAMES)})")
        return torchscript, [path / name for name in ONNX_FILE_NAMES if (path / name).is_file()]
    raise EdgeStoreError(f"{path}: no such model file or folder")


@dataclass(frozen=True)
class CaseRecord:
    """One case as the store holds it; ``files`` maps a kind (see ``FILE_NAMES``) to its absolute path.

    ``added`` is True only on the :meth:`EdgeStore.record_case` call that stored it.
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    route: str
    state: str
    confidence: float
    model_version: str
    rows: int
    columns: int
    recorded_at: str
    corrected_at: Optional[str]
    correction_file: Optional[str]
    files: Mapping[str, Path] = field(default_factory=dict)
    added: bool = False

    @property
    def training_label(self) -> Path:
        """The mask a training run should learn from: the reviewer's where there is one, else the model's."""
        return self.files.get("corrected_mask", self.files["mask"])


@dataclass(frozen=True)
class CorrectedMask:
    """A checked correction, ready to commit: the case it closes, the mask, and where it came from."""

    sop_instance_uid: str
    mask: np.ndarray  # (rows, columns), anything > 0 is lesion
    origin: Path  # the reviewer's file, named in the case's row
    seg_path: Optional[Path] = None  # the reviewer's DICOM-SEG, kept beside the mask for provenance


class EdgeStore:
    """The sample store and review queue at one edge site (see the module docstring for layout and guarantees).

    Use as a context manager, or call :meth:`close`: an open store holds a shared lock that keeps other
    processes from sweeping files it may be writing.  One instance may be shared by threads.
    """

    def __init__(self, root, create: bool = True) -> None:
        self.root = Path(root).absolute()
        if not (self.root / DATABASE_NAME).is_file() and not create:
            raise EdgeStoreError(f"no edge store at {self.root} (no {DATABASE_NAME})")
        (self.root / CASES_FOLDER).mkdir(parents=True, exist_ok=True)
        (self.root / MODELS_FOLDER).mkdir(exist_ok=True)
        self._thread_lock = threading.RLock()
        self._files_written: List[Path] = []  # by the current write transaction, deleted if it rolls back
        self._lock_fd: Optional[int] = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._db = sqlite3.connect(
                self.root / DATABASE_NAME, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when commit() returns, so a committed case survives a power cut too.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._create_schema()
            self._recover_if_alone()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def _create_schema(self) -> None:
        if self._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the usual case: no write lock needed just to open
        with self._write_transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise EdgeStoreError(f"{self.root}: store schema {version} is newer than this software ({SCHEMA_VERSION})")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._thread_lock:
            if getattr(self, "_db", None) is not None:
                self._db.close()
                self._db = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> "EdgeStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @contextlib.contextmanager
    def _write_transaction(self):
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any exception ``ROLLBACK`` and delete the files written in it.

        IMMEDIATE takes SQLite's write lock at once, so existence checks made inside stay true until COMMIT, and
        two writers never put files into the same case folder at the same time.
        """
        with self._thread_lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._files_written = []
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                for path in self._files_written:  # the sweep would get them too; no need to wait for it
                    path.unlink(missing_ok=True)
                raise
            finally:
                self._files_written = []

    def _recover_if_alone(self) -> None:
        """Run the recovery sweep if no other process has the store open, then hold a shared lock."""
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.debug("%s is open elsewhere: recovery sweep left to the next lone opener", self.root)
        else:
            self._sweep_unreferenced_files()
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # blocks only while another opener sweeps

    def _sweep_unreferenced_files(self) -> List[Path]:
        """Delete every file under cases/ and models/ that no committed row references; return what went.

        Only ever called on open, holding the exclusive lock: no other process has the store open.  These files are what a killed
        process leaves: temporary ``.part`` files, and files renamed into place whose row never committed.
        """
        removed: List[Path] = []
        with self._thread_lock:
            referenced = {
                row[0]
                for row in self._db.execute(
                    "SELECT relpath FROM files UNION SELECT relpath FROM models UNION SELECT relpath FROM model_exports"
                )
            }
            for top in (CASES_FOLDER, MODELS_FOLDER):
                for folder, subfolders, file_names in os.walk(self.root / top, topdown=False):
                    folder_path = Path(folder)
                    # os.walk lists a link to a folder among the folders; real folders are handled on the way up
                    links = [name for name in subfolders if (folder_path / name).is_symlink()]
                    for name in file_names + links:
                        path = folder_path / name
                        relpath = path.relative_to(self.root).as_posix()
                        if relpath == f"{MODELS_FOLDER}/{ACTIVE_LINK}":
                            continue
                        if relpath not in referenced:
                            path.unlink()
                            removed.append(path)
                    if folder_path != self.root / top and not any(folder_path.iterdir()):
                        folder_path.rmdir()  # an empty case folder left by a rolled-back write
            self._point_active_link()
        for path in removed:
            logger.warning("edge store recovery: removed %s (not referenced by any committed row)", path)
        return removed

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
        if not is_valid_uid(sop_instance_uid):
            raise ValueError(f"sop_instance_uid {sop_instance_uid!r} is not a valid DICOM UID (digits and dots, <= 64)")
        for name, value in (("study_instance_uid", study_instance_uid), ("series_instance_uid", series_instance_uid)):
            if not is_valid_uid(value):
                raise ValueError(f"{name} {value!r} is not a valid DICOM UID")
        if route not in ROUTES:
            raise ValueError(f"route {route!r} must be one of {ROUTES}")
        confidence = float(confidence)
        if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
            raise ValueError(f"confidence {confidence} must be a number in [0, 1]")
        if not isinstance(model_version, str) or not model_version.strip():
            raise ValueError(f"model_version {model_version!r} must be a non-empty string")
        image = np.asarray(image)
        mask = np.asarray(mask)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match the image's {image.shape[:2]}")

        existing = self.get_case(sop_instance_uid)
        if existing is not None:
            self._log_repeat(existing, model_version)
            return existing

        source_bytes = Path(source_path).read_bytes()
        self._check_source(source_path, source_bytes, sop_instance_uid, image.shape[:2])
        payload: Dict[str, bytes] = {
            "image": _png_bytes(np.ascontiguousarray(image)),
            "mask": mask_png_bytes(mask),
            "source": source_bytes,
        }
        for kind, path in (("seg", seg_path), ("sr", sr_path), ("overlay", overlay_path)):
            if path is not None:
                payload[kind] = Path(path).read_bytes()
        if "overlay" in payload and not payload["overlay"].startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"overlay {overlay_path} is not a PNG file")

        with self._write_transaction() as db:
            if db.execute("SELECT 1 FROM cases WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone():
                added = False  # another process stored it since the check above
            else:
                db.execute(
                    "INSERT INTO cases (sop_instance_uid, study_instance_uid, series_instance_uid, route, state,"
                    " confidence, model_version, rows, columns, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sop_instance_uid, study_instance_uid, series_instance_uid, route, route, confidence,
                     model_version, int(image.shape[0]), int(image.shape[1]), _now()),
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

    @staticmethod
    def _check_source(path, data: bytes, sop_instance_uid: str, shape: Tuple[int, int]) -> None:
        """The source DICOM must be the image the case is about: same SOP Instance UID, same size."""
        import pydicom  # lazily: the store's read-only commands need no DICOM parsing

        try:
            source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as exc:
            raise ValueError(f"source {path} is not a readable DICOM file: {exc}") from None
        if str(source.get("SOPInstanceUID", "")) != sop_instance_uid:
            raise ValueError(f"source {path} has SOPInstanceUID {source.get('SOPInstanceUID')!r}, not {sop_instance_uid}")
        rows, columns = source.get("Rows"), source.get("Columns")
        if rows is not None and columns is not None and (int(rows), int(columns)) != tuple(shape):
            raise ValueError(f"source {path} is {rows}x{columns} pixels, the image is {shape[0]}x{shape[1]}")

    def _write_case_files(self, db: sqlite3.Connection, sop_instance_uid: str, payload: Mapping[str, bytes]) -> None:
        """Inside a write transaction: put each file in place durably and add its row."""
        case_folder = self.root / CASES_FOLDER / sop_instance_uid
        new_folder = not case_folder.exists()
        case_folder.mkdir(exist_ok=True)
        for kind, data in payload.items():
            path = case_folder / FILE_NAMES[kind]
            self._files_written.append(path)
            atomic_write_bytes(path, data)
            db.execute(
                "INSERT INTO files (sop_instance_uid, kind, relpath, sha256, size) VALUES (?, ?, ?, ?, ?)",
                (sop_instance_uid, kind, path.relative_to(self.root).as_posix(), hashlib.sha256(data).hexdigest(), len(data)),
            )
        _fsync_folder(case_folder)
        if new_folder:
            _fsync_folder(case_folder.parent)

    # ------------------------------------------------------------------ reading

    def _record_from_row(self, row: sqlite3.Row) -> CaseRecord:
        files = {
            kind: self.root / relpath
            for kind, relpath in self._db.execute(
                "SELECT kind, relpath FROM files WHERE sop_instance_uid = ?", (row["sop_instance_uid"],)
            )
        }
        return CaseRecord(**{key: row[key] for key in row.keys()}, files=files)

    def get_case(self, sop_instance_uid: str) -> Optional[CaseRecord]:
        with self._thread_lock:
            row = self._db.execute("SELECT * FROM cases WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
            return None if row is None else self._record_from_row(row)

    def cases(self, states: Iterable[str] = (ROUTE_ACCEPTED, ROUTE_REVIEW, STATE_CORRECTED)) -> List[CaseRecord]:
        """The cases in the given states, oldest first (then by UID, so listings are reproducible)."""
        states = tuple(states)
        with self._thread_lock:
            rows = self._db.execute(
                f"SELECT * FROM cases WHERE state IN ({','.join('?' * len(states))}) ORDER BY recorded_at, sop_instance_uid",
                states,
            ).fetchall()
            return [self._record_from_row(row) for row in rows]

    def counts(self) -> Dict[str, int]:
        """Cases per state: ``accepted``, ``review`` (still waiting) and ``corrected``."""
        counts = {ROUTE_ACCEPTED: 0, ROUTE_REVIEW: 0, STATE_CORRECTED: 0}
        with self._thread_lock:
            for state, count in self._db.execute("SELECT state, COUNT(*) FROM cases GROUP BY state"):
                counts[state] = count
        return counts

    def status(self) -> dict:
        """What ``python -m monai_app.edge status`` prints."""
        return {**self.counts(), "model_version": self.active_model_version()}

    def verify(self) -> List[str]:
        """Problems with the files the rows reference (missing, or changed since written); empty when sound."""
        problems = []
        with self._thread_lock:
            rows = self._db.execute(
                "SELECT relpath, sha256 FROM files UNION ALL SELECT relpath, sha256 FROM models "
                "UNION ALL SELECT relpath, sha256 FROM model_exports"
            ).fetchall()
        for relpath, sha256 in rows:
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
        with self._write_transaction() as db:
            for correction, mask_png, seg_bytes in encoded:
                row = db.execute(
                    "SELECT state, rows, columns FROM cases WHERE sop_instance_uid = ?", (correction.sop_instance_uid,)
                ).fetchone()
                if row is None or row["state"] != ROUTE_REVIEW:
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
                    (STATE_CORRECTED, _now(), correction.origin.name, correction.sop_instance_uid),
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
        samples = self.cases((ROUTE_ACCEPTED, STATE_CORRECTED))
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
        send corrections back).  The package is built beside ``out_folder`` and renamed into place, so a
        reviewer never sees half a package.
        """
        from .review_package import build_review_package  # keeps the store module about storing

        out_folder = Path(out_folder).absolute()
        if out_folder.exists() and (not out_folder.is_dir() or any(out_folder.iterdir())):
            raise EdgeStoreError(f"{out_folder} exists and is not an empty folder; choose a new one")
        out_folder.parent.mkdir(parents=True, exist_ok=True)
        staging = partial_name(out_folder)
        try:
            manifest = build_review_package(self.cases((ROUTE_REVIEW,)), staging, self.active_model_version())
            if out_folder.exists():
                out_folder.rmdir()
            os.rename(staging, out_folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    # ------------------------------------------------------------------ models

    def active_model_version(self) -> Optional[str]:
        with self._thread_lock:
            row = self._db.execute("SELECT version FROM model_stack ORDER BY position DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def active_model_path(self) -> Optional[Path]:
        """The active model's folder ``models/<version>/`` (its ``model.ts``, and ``model.onnx`` where one was
        installed), or None where no model was ever installed.

        The app uses it when no ``-m`` is given and picks the file as for any model folder.
        (``DIR/models/active/`` is the same folder for tools that want a fixed path.)
        """
        version = self.active_model_version()
        return None if version is None else self.root / MODELS_FOLDER / version

    def model_history(self) -> List[dict]:
        with self._thread_lock:
            return [dict(row) for row in self._db.execute("SELECT action, version, at FROM model_events ORDER BY id")]

    def install_model(self, path) -> str:
        """Install an exported model as ``models/<version>/`` and make it the active one; returns the version.

        ``path`` is a TorchScript file, or a folder with ``model.ts`` and optionally ``model.onnx`` and
        ``model_int8.onnx`` (the bundle's ``models/`` folder); the app serves an ONNX export on a CPU where there
        is one (see ``operators.model.resolve_model_file``).  The version is the ``"version"`` in the
        TorchScript's embedded ``metadata.json``, and each ONNX export must load and carry the same.  Installing a
        version that is already installed
        with the same files just makes it active again; the same version with other files is refused (a version
        must name one model).
        """
        torchscript, onnx_files = model_exports(path)
        metadata = read_model_metadata(torchscript)
        version = str(metadata.get("version") or "")
        if not _VERSION_PATTERN.fullmatch(version):
            raise EdgeStoreError(
                f"{torchscript}: metadata.json 'version' {metadata.get('version')!r} is missing or not a plain version "
                "string (letters, digits, '.', '_', '+', '-'; at most 64)"
            )
        for onnx in onnx_files:
            onnx_version = read_onnx_version(onnx)
            if onnx_version != version:
                raise EdgeStoreError(f"{onnx}: version {onnx_version!r} differs from {torchscript}'s {version!r}")
        name = str(metadata.get("name") or torchscript.stem)[:64]
        files = {MODEL_FILE_NAME: torchscript.read_bytes(), **{onnx.name: onnx.read_bytes() for onnx in onnx_files}}
        contents = {file_name: hashlib.sha256(file_data).hexdigest() for file_name, file_data in files.items()}
        folder = self.root / MODELS_FOLDER / version
        relpath = f"{MODELS_FOLDER}/{version}/"
        with self._write_transaction() as db:
            installed = db.execute("SELECT sha256 FROM models WHERE version = ?", (version,)).fetchone()
            if installed is not None:
                exports = db.execute("SELECT relpath, sha256 FROM model_exports WHERE version = ?", (version,)).fetchall()
                installed_contents = {MODEL_FILE_NAME: installed[0], **{row[0][len(relpath):]: row[1] for row in exports}}
                if installed_contents != contents:
                    raise EdgeStoreError(
                        f"{path}: version {version} is already installed with different contents; export it with a new version"
                    )
            else:
                folder.mkdir(exist_ok=True)
                for file_name, file_data in files.items():
                    self._files_written.append(folder / file_name)
                    atomic_write_bytes(folder / file_name, file_data)
                _fsync_folder(folder)
                _fsync_folder(folder.parent)
                db.execute(
                    "INSERT INTO models (version, name, relpath, sha256, installed_at) VALUES (?, ?, ?, ?, ?)",
                    (version, name, relpath + MODEL_FILE_NAME, contents[MODEL_FILE_NAME], _now()),
                )
                for file_name in files.keys() - {MODEL_FILE_NAME}:
                    db.execute(
                        "INSERT INTO model_exports (version, relpath, sha256) VALUES (?, ?, ?)",
                        (version, relpath + file_name, contents[file_name]),
                    )
                db.execute("INSERT INTO model_events (action, version, at) VALUES ('install', ?, ?)", (version, _now()))
            top = db.execute("SELECT version FROM model_stack ORDER BY position DESC LIMIT 1").fetchone()
            if top is None or top[0] != version:
                db.execute("INSERT INTO model_stack (version, activated_at) VALUES (?, ?)", (version, _now()))
                db.execute("INSERT INTO model_events (action, version, at) VALUES ('activate', ?, ?)", (version, _now()))
        self._point_active_link()
        return version

    def rollback_model(self) -> str:
        """Go back to the model that was active before the current one; return its version.

        The rolled-back model's files stay (installing it again re-activates it).
        """
        with self._write_transaction() as db:
            stack = db.execute("SELECT position, version FROM model_stack ORDER BY position DESC LIMIT 2").fetchall()
            if len(stack) < 2:
                current = stack[0]["version"] if stack else None
                raise EdgeStoreError(f"no earlier model to roll back to (active: {current or 'none'})")
            db.execute("DELETE FROM model_stack WHERE position = ?", (stack[0]["position"],))
            db.execute("INSERT INTO model_events (action, version, at) VALUES ('rollback', ?, ?)", (stack[1]["version"], _now()))
        self._point_active_link()
        return stack[1]["version"]

    def _point_active_link(self) -> None:
        """Make ``models/active`` point at the active model's folder, by an atomic rename of a new link.

        The database is the truth; the link follows it after each commit, and on open after a crash.
        """
        version = self.active_model_version()
        link = self.root / MODELS_FOLDER / ACTIVE_LINK
        if version is None:
            if link.is_symlink():
                link.unlink()
            return
        if link.is_symlink() and os.readlink(link) == version:
            return
        tmp = partial_name(link)
        os.symlink(version, tmp)
        os.replace(tmp, link)
        _fsync_folder(link.parent)
