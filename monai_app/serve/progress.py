# Copyright (c) the dermseg contributors. Apache-2.0.
"""The service's durable progress: ``WORK/serve.sqlite`` (WAL, ``synchronous=FULL``; every change one transaction).

Tables:

    feed       the position in Orthanc's changes feed (the last ``Seq`` taken in)
    rounds     one row per (Orthanc study id, round): its state, attempts, error and counts
    instances  every instance a round has taken (processed or skipped), so a later round takes only new ones

A study's life is one or more *rounds*: the first when it becomes stable, another each time Orthanc reports it
stable again after new instances arrived (a late photo, or our own results coming back), which then handles only
the instances no earlier round took.  A round's states::

    arriving -> queued -> sending -> done
                  |  \\-> skipped   (nothing to segment: no app run)
                  \\----> failed    (the app failed max_attempts times, or the study vanished from Orthanc)

``arriving`` is a study Orthanc announced (NewStudy) that is not stable yet; it turns ``queued`` on StableStudy, or
when a sweep finds it stable (Orthanc does not persist its stability timers: a restart of Orthanc can swallow a
StableStudy, and the sweep makes sure no study is lost that way).  The commit points are described in
:mod:`monai_app.serve`.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

from operators.conventions import utc_timestamp

__all__ = ["ARRIVING", "DONE", "FAILED", "QUEUED", "SENDING", "SKIPPED", "FINISHED", "Progress", "Round"]

ARRIVING, QUEUED, SENDING, DONE, SKIPPED, FAILED = "arriving", "queued", "sending", "done", "skipped", "failed"
FINISHED = (DONE, SKIPPED, FAILED)
PENDING = (QUEUED, SENDING)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feed (id INTEGER PRIMARY KEY CHECK (id = 1), position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    study TEXT NOT NULL,
    round INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,      -- app runs started in this round
    send_tries INTEGER NOT NULL DEFAULT 0,    -- sends that did not get everything to every target
    restable INTEGER NOT NULL DEFAULT 0,      -- Orthanc said "stable" again while the round was under way
    error TEXT,                               -- why the last attempt or send failed
    note TEXT,                                -- why a round was skipped
    next_try REAL NOT NULL DEFAULT 0,         -- unix time before which the round waits (retry delay)
    photos INTEGER, other_instances INTEGER, cases_ok INTEGER, cases_error INTEGER, review INTEGER, sent INTEGER,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (study, round)
);
CREATE INDEX IF NOT EXISTS rounds_state ON rounds (state, next_try);
CREATE TABLE IF NOT EXISTS instances (instance TEXT PRIMARY KEY, study TEXT NOT NULL, round INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Round:
    study: str
    round: int
    state: str
    attempts: int
    send_tries: int
    restable: bool
    error: Optional[str]
    next_try: float
    created: str

    @property
    def key(self) -> str:
        return f"{self.study}/{self.round}"


class Progress:
    """The progress database.  One service owns a work folder (``WORK/.lock``); readers (tests, a status
    command) may open it alongside."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._transaction() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO feed (id, position) VALUES (1, 0)")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # the feed --------------------------------------------------------------------------------------------------
    @property
    def position(self) -> int:
        return int(self._db.execute("SELECT position FROM feed WHERE id = 1").fetchone()[0])

    def take_in(self, events: Iterable[tuple], position: int) -> int:
        """Record a page of the changes feed and the new position in ONE transaction: after a crash the page is
        either wholly taken in or read again (taking an event in twice changes nothing).  ``events`` are
        ``(study id, stable)`` pairs in feed order.  Returns how many rounds were queued."""
        queued = 0
        with self._transaction() as db:
            for study, stable in events:
                queued += self._event(db, study, stable)
            db.execute("UPDATE feed SET position = ? WHERE id = 1", (int(position),))
        return queued

    def _event(self, db: sqlite3.Connection, study: str, stable: bool) -> int:
        latest = self._latest(db, study)
        if latest is None:
            self._insert(db, study, 1, QUEUED if stable else ARRIVING)
            return int(stable)
        if not stable:
            return 0
        if latest.state == ARRIVING:
            self._set(db, latest, state=QUEUED)
            return 1
        if latest.state in PENDING:
            self._set(db, latest, restable=1)  # handled when this round finishes: the next one takes what is new
            return 0
        self._insert(db, study, latest.round + 1, QUEUED)
        return 1

    def arriving(self, older_than_s: float) -> List[Round]:
        cutoff = time.time() - older_than_s
        rows = self._db.execute("SELECT * FROM rounds WHERE state = ? ORDER BY rowid", (ARRIVING,)).fetchall()
        return [r for r in map(_round, rows) if _epoch(r.created) < cutoff]

    def forget_arriving(self, item: Round) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM rounds WHERE study = ? AND round = ? AND state = ?", (item.study, item.round, ARRIVING))

    def mark_stable(self, item: Round) -> None:
        with self._transaction() as db:
            self._event(db, item.study, True)

    # work ------------------------------------------------------------------------------------------------------
    def next_due(self, queued: bool = True, sending: bool = True) -> Optional[Round]:
        """The next round to work on, of the kinds allowed now (no new runs while Orthanc is in backoff, no sends
        while the PACS is): one whose results wait to be sent first, then the oldest queued one; None when
        nothing is due."""
        states = [state for state, allowed in ((SENDING, sending), (QUEUED, queued)) if allowed]
        if not states:
            return None
        marks = ",".join("?" * len(states))
        row = self._db.execute(
            f"SELECT * FROM rounds WHERE state IN ({marks}) AND next_try <= ? "
            "ORDER BY state = 'sending' DESC, rowid LIMIT 1",
            (*states, time.time()),
        ).fetchone()
        return _round(row) if row else None

    def taken_instances(self, study: str) -> set:
        return {r[0] for r in self._db.execute("SELECT instance FROM instances WHERE study = ?", (study,))}

    def start_attempt(self, item: Round) -> Round:
        """Commit point: the attempt counts before the app starts, so a study that kills the service every time
        (out of memory, say) still runs out of attempts instead of looping."""
        with self._transaction() as db:
            self._set(db, item, attempts=item.attempts + 1)
            return self._latest_round(db, item)

    def abandon_attempt(self, item: Round) -> None:
        """A clean stop interrupted the app: that attempt does not count."""
        with self._transaction() as db:
            self._set(db, item, attempts=max(0, item.attempts - 1))

    def attempt_failed(self, item: Round, error: str, max_attempts: int, retry_in: float) -> str:
        """Record the error; the round goes back to the queue after ``retry_in`` s, or fails for good."""
        with self._transaction() as db:
            if item.attempts >= max_attempts:
                return self._finish(db, item, FAILED, error=error)
            self._set(db, item, error=error, next_try=time.time() + retry_in)
            return QUEUED

    def app_done(self, item: Round, instances: Iterable[str], counts: Dict[str, int]) -> None:
        """Commit point: the app's outputs are complete; from here the round is only ever sent, never run again."""
        with self._transaction() as db:
            self._take(db, item, instances)
            self._set(db, item, state=SENDING, error=None, next_try=0, **counts)

    def send_failed(self, item: Round, error: str, retry_in: float) -> None:
        with self._transaction() as db:
            self._set(db, item, send_tries=item.send_tries + 1, error=error, next_try=time.time() + retry_in)

    def finish(self, item: Round, state: str, instances: Iterable[str] = (), error: Optional[str] = None,
               **counts) -> str:
        """Commit point: the round's outcome (done, skipped, failed) and the instances it took, in one
        transaction; a round Orthanc reported stable again meanwhile is followed by a new queued round."""
        with self._transaction() as db:
            self._take(db, item, instances)
            return self._finish(db, item, state, error=error, **counts)

    # reading ---------------------------------------------------------------------------------------------------
    def rounds(self) -> List[dict]:
        return [dict(row) for row in self._db.execute("SELECT * FROM rounds ORDER BY rowid")]

    def finished_at(self, study: str, number: int) -> Optional[float]:
        """When the round was recorded done, skipped or failed (unix time); None while it is not, or is unknown."""
        row = self._db.execute("SELECT state, updated FROM rounds WHERE study = ? AND round = ?",
                               (study, number)).fetchone()
        return _epoch(row["updated"]) if row is not None and row["state"] in FINISHED else None

    def queue_depth(self) -> int:
        marks = ",".join("?" * len(PENDING))
        return int(self._db.execute(f"SELECT COUNT(*) FROM rounds WHERE state IN ({marks})", PENDING).fetchone()[0])

    # helpers ---------------------------------------------------------------------------------------------------
    def _finish(self, db, item: Round, state: str, error: Optional[str] = None, **counts) -> str:
        current = self._latest_round(db, item)
        self._set(db, item, state=state, error=error, next_try=0, restable=0, **counts)
        if current.restable:
            self._insert(db, item.study, item.round + 1, QUEUED)
        return state

    @staticmethod
    def _take(db, item: Round, instances: Iterable[str]) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO instances (instance, study, round) VALUES (?, ?, ?)",
            [(i, item.study, item.round) for i in instances],
        )

    @staticmethod
    def _insert(db, study: str, number: int, state: str) -> None:
        now = utc_timestamp()
        db.execute(
            "INSERT INTO rounds (study, round, state, created, updated) VALUES (?, ?, ?, ?, ?)",
            (study, number, state, now, now),
        )

    @staticmethod
    def _set(db, item: Round, **values) -> None:
        values["updated"] = utc_timestamp()
        assignments = ", ".join(f"{name} = ?" for name in values)
        db.execute(
            f"UPDATE rounds SET {assignments} WHERE study = ? AND round = ?", (*values.values(), item.study, item.round)
        )

    @staticmethod
    def _latest(db, study: str) -> Optional[Round]:
        row = db.execute("SELECT * FROM rounds WHERE study = ? ORDER BY round DESC LIMIT 1", (study,)).fetchone()
        return _round(row) if row else None

    @staticmethod
    def _latest_round(db, item: Round) -> Round:
        return _round(db.execute("SELECT * FROM rounds WHERE study = ? AND round = ?", (item.study, item.round)).fetchone())


def _round(row: sqlite3.Row) -> Round:
    return Round(
        study=row["study"], round=row["round"], state=row["state"], attempts=row["attempts"],
        send_tries=row["send_tries"], restable=bool(row["restable"]), error=row["error"], next_try=row["next_try"],
        created=row["created"],
    )


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp).timestamp()
