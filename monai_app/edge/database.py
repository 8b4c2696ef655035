# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge store's write protocol: one SQLite database that decides which files belong to the store.

Durability.  A row is the only thing that makes a file part of the store.  Every write goes: encode in memory,
take SQLite's write lock (``BEGIN IMMEDIATE``), write each file under a temporary name in its final folder,
fsync, rename into place, fsync the folder, insert the rows, commit.  A process killed at any moment therefore
leaves either the committed rows with all their files, or no row and some unreferenced files; opening the store
deletes those (the recovery sweep), so there is never a half entry, an orphan file or a duplicate (the source
SOP Instance UID is the primary key).  The sweep runs only when no other process has the store open (an
exclusive ``flock`` on ``DIR/.lock``), so it can never delete a file another process is about to commit.

The case store and the model registry both write through :class:`StoreDatabase`, so the protocol lives in one
place: :meth:`StoreDatabase.write_transaction` and :meth:`StoreDatabase.put_files`.

The store must live on a local file system: ``flock`` and SQLite's WAL do not work on network shares.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Iterator, List, Mapping, Optional, Sequence

from networks.durable import atomic_write_bytes, fsync_folder

from .schema import (
    ACTIVE_LINK,
    CASES_FOLDER,
    DATABASE_NAME,
    LOCK_NAME,
    MODELS_FOLDER,
    REFERENCED_FILES_SQL,
    SCHEMA,
    SCHEMA_VERSION,
    EdgeStoreError,
)

__all__ = ["StoreDatabase"]

# The store's one log channel, whichever of its modules writes to it.
logger = logging.getLogger("monai_app.edge.store")


class StoreDatabase:
    """An open store folder: its SQLite connection, the lock that guards the recovery sweep, and the write protocol.

    ``lock`` serialises the threads that share one instance; every read and write holds it.
    """

    def __init__(self, root: Path, create: bool = True) -> None:
        self.root = root
        if not (root / DATABASE_NAME).is_file() and not create:
            raise EdgeStoreError(f"no edge store at {root} (no {DATABASE_NAME})")
        (root / CASES_FOLDER).mkdir(parents=True, exist_ok=True)
        (root / MODELS_FOLDER).mkdir(exist_ok=True)
        self.lock = threading.RLock()
        self.connection: Optional[sqlite3.Connection] = None
        self._files_written: List[Path] = []  # by the current write transaction, deleted if it rolls back
        self._lock_fd: Optional[int] = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.connection = sqlite3.connect(root / DATABASE_NAME, timeout=60.0, isolation_level=None, check_same_thread=False)
            self.connection.row_factory = sqlite3.Row
            self.connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when commit() returns, so a committed case survives a power cut too.
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.execute("PRAGMA foreign_keys=ON")
            self._create_schema()
        except BaseException:
            self.close()
            raise

    def _create_schema(self) -> None:
        if self.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the usual case: no write lock needed just to open
        with self.write_transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise EdgeStoreError(f"{self.root}: store schema {version} is newer than this software ({SCHEMA_VERSION})")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self.lock:
            if self.connection is not None:
                self.connection.close()
                self.connection = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    # ------------------------------------------------------------------ reading and writing

    def query(self, sql: str, parameters: Sequence = ()) -> List[sqlite3.Row]:
        """Every row of one read, under the thread lock."""
        with self.lock:
            return self.connection.execute(sql, parameters).fetchall()

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any exception ``ROLLBACK`` and delete the files written in it.

        IMMEDIATE takes SQLite's write lock at once, so existence checks made inside stay true until COMMIT, and
        two writers never put files into the same case folder at the same time.
        """
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            self._files_written = []
            try:
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException:
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
                for path in self._files_written:  # the sweep would get them too; no need to wait for it
                    path.unlink(missing_ok=True)
                raise
            finally:
                self._files_written = []

    def put_files(self, folder: Path, files: Mapping[str, bytes]) -> None:
        """Inside a write transaction: put each ``name: data`` into ``folder`` (made where missing) durably.

        Each file is written under a temporary name, fsynced and renamed into place; then the folder and its
        parent are fsynced, so the new entries survive a power cut once the caller's rows commit.  A rollback
        deletes the files again.
        """
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            self._files_written.append(folder / name)
            atomic_write_bytes(folder / name, data)
        fsync_folder(folder)
        fsync_folder(folder.parent)

    # ------------------------------------------------------------------ recovery

    def recover_if_alone(self, after_sweep: Callable[[], None]) -> None:
        """Run the recovery sweep (then ``after_sweep``) if no other process has the store open; then hold a
        shared lock, which keeps later openers from sweeping while this one is open."""
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.debug("%s is open elsewhere: recovery sweep left to the next lone opener", self.root)
        else:
            with self.lock:
                removed = self._sweep_unreferenced_files()
                after_sweep()
            for path in removed:
                logger.warning("edge store recovery: removed %s (not referenced by any committed row)", path)
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # blocks only while another opener sweeps

    def _sweep_unreferenced_files(self) -> List[Path]:
        """Delete every file under cases/ and models/ that no committed row references; return what went.

        Only ever called on open, holding the exclusive lock: no other process has the store open.  These files
        are what a killed process leaves: temporary ``.part`` files, and files renamed into place whose row
        never committed.  The ``models/active`` link is no file of the store's; the caller points it afresh.
        """
        removed: List[Path] = []
        referenced = {row[0] for row in self.query(REFERENCED_FILES_SQL)}
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
        return removed
