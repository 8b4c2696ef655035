# Copyright (c) the dermseg contributors. Apache-2.0.
"""What an edge store folder holds: the names of its parts, the SQLite schema, the case states and the records.

Layout of a store folder ``DIR``::

    DIR/edge.sqlite              the database (WAL): one row per case, one per stored file, the models
    DIR/.lock                    advisory lock: who may run the recovery sweep
    DIR/cases/<SOPInstanceUID>/  image.png, mask.png (0/255), source.dcm, [seg.dcm, sr.dcm, overlay.png],
                                 after a review: corrected_mask.png (0/255), [corrected_seg.dcm]
    DIR/models/<version>/model.ts  [model.onnx] [model_int8.onnx]
    DIR/models/active ->         <version> (a convenience link; the database says which model is active)

Existing stores are read with these names and this schema, so none of them may change; a new table or column
raises ``SCHEMA_VERSION`` and is added to older stores when they are opened (see ``database.py``).  The states
a case row can hold are defined once, here, and the schema's CHECK constraints are written from them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from operators.conventions import Route

__all__ = [
    "CaseState",
    "EdgeStoreError",
    "CaseRecord",
    "CorrectedMask",
    "FILE_NAMES",
    "PNG_SIGNATURE",
    "SCHEMA",
    "SCHEMA_VERSION",
]

DATABASE_NAME = "edge.sqlite"
LOCK_NAME = ".lock"
CASES_FOLDER = "cases"
MODELS_FOLDER = "models"
ACTIVE_LINK = "active"

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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class CaseState(str, enum.Enum):
    """Where a case stands in the edge loop; the values are what the ``cases`` table stores.

    A case starts in the state of its route (the same strings as :class:`operators.conventions.Route`); a
    review case whose corrected mask came back becomes ``corrected``.
    """

    ACCEPTED = Route.ACCEPTED.value  # a training sample with the model's mask
    REVIEW = Route.REVIEW.value  # waiting for the institution's reviewer
    CORRECTED = "corrected"  # a training sample with the reviewer's mask

    def __str__(self) -> str:
        return str(self.value)


def _sql_values(members: Iterable[enum.Enum]) -> str:
    return ", ".join(f"'{member.value}'" for member in members)


# 2: model_exports (a version's ONNX exports beside its TorchScript); 3: model_scores (the gate's scores).
# Older stores open and migrate.
SCHEMA_VERSION = 3

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cases (
    sop_instance_uid    TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    route               TEXT NOT NULL CHECK (route IN ({_sql_values(Route)})),
    state               TEXT NOT NULL CHECK (state IN ({_sql_values(CaseState)})),
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
-- The install gate's scores: each model it ran, scored on the store's corrected cases (mean Jaccard against the
-- reviewers' masks).  One row per model and gate run (a refused version is scored, never installed).
CREATE TABLE IF NOT EXISTS model_scores (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    version      TEXT NOT NULL,
    mean_jaccard REAL NOT NULL,
    cases        INTEGER NOT NULL,
    scored_at    TEXT NOT NULL
);
"""

# Every stored file's path relative to the store, from the three tables that reference files.
REFERENCED_FILES_SQL = (
    "SELECT relpath, sha256 FROM files UNION ALL SELECT relpath, sha256 FROM models "
    "UNION ALL SELECT relpath, sha256 FROM model_exports"
)


class EdgeStoreError(Exception):
    """A request the store refuses, with a message a person can act on."""


@dataclass(frozen=True)
class CaseRecord:
    """One case as the store holds it; ``files`` maps a kind (see ``FILE_NAMES``) to its absolute path.

    ``state`` and ``route`` are the strings the database holds (equal to the :class:`CaseState` and
    :class:`~operators.conventions.Route` members).  ``added`` is True only on the
    :meth:`EdgeStore.record_case` call that stored it.
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
