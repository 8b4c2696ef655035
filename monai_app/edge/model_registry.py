# Copyright (c) the dermseg contributors. Apache-2.0.
"""The models deployed at an edge site: each installed version, which one is active, and the way back.

The cloud (the training bundle) exports a model as ``model.ts`` (TorchScript), and optionally ``model.onnx`` and
``model_int8.onnx``, each embedding the bundle's ``metadata.json``.  Its ``"version"`` names the model at the
edge: a version is installed once into ``models/<version>/`` and never changes afterwards (the same version with
other files is refused), so a result's recorded model version always names one set of weights.  The exports
are read by ``operators.model``, the same code that serves them in the app, so what installs here also loads
there.

The active model is the top of a stack of versions: install pushes, rollback pops, and every step is kept in
an audit table.  ``models/active`` is a link to the active folder for tools that want a fixed path; the
database is the truth and the link follows it after each commit (and on open, after a crash).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

from networks.durable import atomic_symlink
from operators.conventions import utc_timestamp

from .database import StoreDatabase
from .schema import ACTIVE_LINK, MODELS_FOLDER, EdgeStoreError

__all__ = ["ModelRegistry", "model_exports", "MODEL_FILE_NAME", "ONNX_FILE_NAMES"]

MODEL_FILE_NAME = "model.ts"
ONNX_FILE_NAME = "model.onnx"
INT8_ONNX_FILE_NAME = "model_int8.onnx"
ONNX_FILE_NAMES = (ONNX_FILE_NAME, INT8_ONNX_FILE_NAME)  # the exports installed beside model.ts where present

# A model version names a folder: no separators, no leading dot.
_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

_TOP_OF_STACK = "SELECT version FROM model_stack ORDER BY position DESC LIMIT 1"


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


def read_name_and_version(torchscript: Path, onnx_files: List[Path]) -> Tuple[str, str]:
    """The model's name and version from the TorchScript's embedded ``metadata.json``; each ONNX export must
    load and carry the same version.  Loading each file proves it is the model it claims to be."""
    from operators.model import load_model, read_torchscript_metadata  # needs torch: only installing loads it

    try:
        metadata = read_torchscript_metadata(torchscript)
    except ValueError as exc:
        raise EdgeStoreError(str(exc)) from None
    version = str(metadata.get("version") or "")
    if not _VERSION_PATTERN.fullmatch(version):
        raise EdgeStoreError(
            f"{torchscript}: metadata.json 'version' {metadata.get('version')!r} is missing or not a plain version "
            "string (letters, digits, '.', '_', '+', '-'; at most 64)"
        )
    for onnx in onnx_files:
        try:
            onnx_version = load_model(onnx, "cpu")[1].version
        except ValueError as exc:
            raise EdgeStoreError(str(exc)) from None
        if onnx_version != version:
            raise EdgeStoreError(f"{onnx}: version {onnx_version!r} differs from {torchscript}'s {version!r}")
    return str(metadata.get("name") or torchscript.stem)[:64], version


class ModelRegistry:
    """The installed model versions of one store, written through its :class:`StoreDatabase`."""

    def __init__(self, database: StoreDatabase) -> None:
        self.database = database
        self.folder = database.root / MODELS_FOLDER

    def active_version(self) -> Optional[str]:
        rows = self.database.query(_TOP_OF_STACK)
        return rows[0][0] if rows else None

    def active_path(self) -> Optional[Path]:
        """The active model's folder ``models/<version>/`` (its ``model.ts``, and ``model.onnx`` where one was
        installed), or None where no model was ever installed.

        The app uses it when no ``-m`` is given and picks the file as for any model folder.
        (``DIR/models/active/`` is the same folder for tools that want a fixed path.)
        """
        version = self.active_version()
        return None if version is None else self.folder / version

    def history(self) -> List[dict]:
        return [dict(row) for row in self.database.query("SELECT action, version, at FROM model_events ORDER BY id")]

    def install(self, path) -> str:
        """Install an exported model as ``models/<version>/`` and make it the active one; returns the version.

        ``path`` is a TorchScript file, or a folder with ``model.ts`` and optionally ``model.onnx`` and
        ``model_int8.onnx`` (the bundle's ``models/`` folder); the app serves an ONNX export on a CPU where there
        is one (see ``operators.model.resolve_model_file``).  The version is the ``"version"`` in the
        TorchScript's embedded ``metadata.json``, and each ONNX export must load and carry the same.  Installing a
        version that is already installed with the same files just makes it active again; the same version with
        other files is refused (a version must name one model).
        """
        torchscript, onnx_files = model_exports(path)
        name, version = read_name_and_version(torchscript, onnx_files)
        files = {MODEL_FILE_NAME: torchscript.read_bytes(), **{onnx.name: onnx.read_bytes() for onnx in onnx_files}}
        contents = {file_name: hashlib.sha256(file_data).hexdigest() for file_name, file_data in files.items()}
        relpath = f"{MODELS_FOLDER}/{version}/"
        with self.database.write_transaction() as db:
            installed = db.execute("SELECT sha256 FROM models WHERE version = ?", (version,)).fetchone()
            if installed is not None:
                exports = db.execute("SELECT relpath, sha256 FROM model_exports WHERE version = ?", (version,)).fetchall()
                installed_contents = {MODEL_FILE_NAME: installed[0], **{row[0][len(relpath):]: row[1] for row in exports}}
                if installed_contents != contents:
                    raise EdgeStoreError(
                        f"{path}: version {version} is already installed with different contents; export it with a new version"
                    )
            else:
                self.database.put_files(self.folder / version, files)
                db.execute(
                    "INSERT INTO models (version, name, relpath, sha256, installed_at) VALUES (?, ?, ?, ?, ?)",
                    (version, name, relpath + MODEL_FILE_NAME, contents[MODEL_FILE_NAME], utc_timestamp()),
                )
                for file_name in files.keys() - {MODEL_FILE_NAME}:
                    db.execute(
                        "INSERT INTO model_exports (version, relpath, sha256) VALUES (?, ?, ?)",
                        (version, relpath + file_name, contents[file_name]),
                    )
                self._log_event(db, "install", version)
            top = db.execute(_TOP_OF_STACK).fetchone()
            if top is None or top[0] != version:
                db.execute("INSERT INTO model_stack (version, activated_at) VALUES (?, ?)", (version, utc_timestamp()))
                self._log_event(db, "activate", version)
        self.point_active_link()
        return version

    def rollback(self) -> str:
        """Go back to the model that was active before the current one; return its version.

        The rolled-back model's files stay (installing it again re-activates it).
        """
        with self.database.write_transaction() as db:
            stack = db.execute("SELECT position, version FROM model_stack ORDER BY position DESC LIMIT 2").fetchall()
            if len(stack) < 2:
                current = stack[0]["version"] if stack else None
                raise EdgeStoreError(f"no earlier model to roll back to (active: {current or 'none'})")
            db.execute("DELETE FROM model_stack WHERE position = ?", (stack[0]["position"],))
            self._log_event(db, "rollback", stack[1]["version"])
        self.point_active_link()
        return stack[1]["version"]

    def record_scores(self, scores: Mapping[str, float], cases: int) -> None:
        """Record the install gate's mean Jaccard of each version on ``cases`` corrected cases (``model_gate.py``)."""
        with self.database.write_transaction() as db:
            for version, score in scores.items():
                db.execute(
                    "INSERT INTO model_scores (version, mean_jaccard, cases, scored_at) VALUES (?, ?, ?, ?)",
                    (version, float(score), int(cases), utc_timestamp()),
                )

    def latest_score(self, version: str) -> Optional[dict]:
        """The latest gate score of ``version``: ``{"mean_jaccard", "cases", "scored_at"}``, or None."""
        rows = self.database.query(
            "SELECT mean_jaccard, cases, scored_at FROM model_scores WHERE version = ? ORDER BY id DESC LIMIT 1",
            (version,),
        )
        return dict(rows[0]) if rows else None

    @staticmethod
    def _log_event(db, action: str, version: str) -> None:
        db.execute("INSERT INTO model_events (action, version, at) VALUES (?, ?, ?)", (action, version, utc_timestamp()))

    def point_active_link(self) -> None:
        """Make ``models/active`` point at the active model's folder, by an atomic rename of a new link.

        The database is the truth; the link follows it after each commit, and on open after a crash.
        """
        version = self.active_version()
        link = self.folder / ACTIVE_LINK
        if version is None:
            if link.is_symlink():
                link.unlink()
            return
        if link.is_symlink() and os.readlink(link) == version:
            return
        atomic_symlink(version, link)
