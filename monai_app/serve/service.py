# Copyright (c) the dermseg contributors. Apache-2.0.
"""The service's loop: take in Orthanc's changes, work the due rounds one at a time, wait out outages.

One round at a time, in one thread: the app run is the expensive part and takes the machine's cores by itself, so
running studies side by side would only add memory.  A round whose results wait to be sent goes before a new app
run (results reach the PACS sooner, and the disk is freed).  Outages are waited out with capped exponential
backoff, one :class:`Backoff` each for Orthanc and for the PACS: while Orthanc is down, results already made are
still sent; while the PACS is down, studies are still segmented and their results wait (state ``sending``).
Neither outage counts against a study's attempts.

With ``DERMSEG_REVIEW_PULL_FROM`` and an edge store, the loop also pulls the reviewers' corrections from that
DICOMweb server every ``DERMSEG_REVIEW_PULL_EVERY`` seconds (``monai_app.edge.pacs_pull``), between rounds: a pull
is a few queries, and a failed one is logged and tried again at the next interval, never stopping the segmentation.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..pacs import SendSummary, send_outputs
from ..settings import AppSettings
from . import study as rounds
from .ops import Metrics
from .orthanc import OrthancClient, OrthancError, OrthancNotFound, OrthancUnavailable
from .progress import DONE, FAILED, QUEUED, SKIPPED, Progress, Round

__all__ = ["Backoff", "EdgeService", "ServiceOptions"]

_log = logging.getLogger(__package__)
STABLE_STUDY, NEW_STUDY = "StableStudy", "NewStudy"


@dataclass(frozen=True)
class ServiceOptions:
    poll_interval: float = 2.0  # seconds between looks at the changes feed when idle
    max_attempts: int = 3  # app runs per round before it is recorded failed
    retry_delay: float = 30.0  # seconds before a failed app run is tried again; doubles after each
    backoff_first: float = 1.0  # seconds before the first retry of an unreachable Orthanc or PACS
    backoff_max: float = 300.0  # the cap of that backoff
    arriving_grace: float = 120.0  # a study announced but not reported stable this long is checked by hand
    page_size: int = 100  # changes per request
    keep_days: float = 30.0  # a finished round's folder (results, app log) is deleted this long after it finished
    prune_every: float = 3600.0  # seconds between looks for such folders


class Backoff:
    """Capped exponential backoff for one dependency, with one log line per failure and one at recovery."""

    def __init__(self, what: str, first: float, cap: float):
        self.what, self.first, self.cap = what, first, cap
        self.failures = 0
        self._until = 0.0

    @property
    def due(self) -> bool:
        return time.monotonic() >= self._until

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    def failed(self, reason: str) -> float:
        delay = min(self.cap, self.first * 2 ** min(self.failures, 30))
        self.failures += 1
        self._until = time.monotonic() + delay
        _log.warning("%s unavailable (%s); trying again in %.0f s", self.what, reason, delay)
        return delay

    def succeeded(self) -> None:
        if self.failures:
            _log.info("%s is back after %d failed tr%s", self.what, self.failures, "y" if self.failures == 1 else "ies")
        self.failures, self._until = 0, 0.0


class EdgeService:
    def __init__(self, orthanc: OrthancClient, work: Path, settings: AppSettings, model: Optional[Path],
                 environ: dict, metrics: Metrics, options: ServiceOptions = ServiceOptions()):
        self.orthanc, self.work, self.settings, self.model = orthanc, Path(work), settings, model
        self.child_env = rounds.app_environment(environ)
        self.metrics, self.options = metrics, options
        self.progress = Progress(self.work / "serve.sqlite")
        self.stop = threading.Event()
        self.orthanc_backoff = Backoff(f"Orthanc at {orthanc.url}", options.backoff_first, options.backoff_max)
        self.pacs_backoff = Backoff("the PACS", options.backoff_first, options.backoff_max)
        self._last_sweep = 0.0
        self._last_pull = float("-inf")
        self._last_prune = float("-inf")

    # the loop --------------------------------------------------------------------------------------------------
    def run(self) -> None:
        _log.info("following Orthanc at %s from change %d; work folder %s", self.orthanc.url, self.progress.position,
                  self.work)
        if not self.settings.send_to:
            _log.warning("DERMSEG_SEND_TO is not set: results stay in %s/studies and are not sent", self.work)
        try:
            while not self.stop.is_set():
                self.pull_corrections()
                self.prune()
                worked = self.step()
                self.metrics.queue_depth.set(self.progress.queue_depth())
                if not worked:
                    self.stop.wait(self.options.poll_interval)
        finally:
            self.progress.close()
            _log.info("stopped")

    def step(self) -> bool:
        """Take in new changes, then work one due round; False when there was nothing to do."""
        orthanc_due = self.orthanc_backoff.due
        try:
            if orthanc_due:
                self.take_in_changes()
                self.sweep_arriving()
            item = self.progress.next_due(queued=orthanc_due, sending=self.pacs_backoff.due)
            if item is None:
                return False
            if item.state == QUEUED:
                self.run_round(item)
            else:
                self.send_round(item)
            return True
        except OrthancError as error:  # unavailable, or an answer the service cannot use: wait, then ask again
            self.metrics.orthanc_up.set(0)
            self.orthanc_backoff.failed(str(error))
            return False

    def take_in_changes(self) -> None:
        while not self.stop.is_set():
            changes, last, done = self.orthanc.changes(self.progress.position, self.options.page_size)
            self.metrics.orthanc_up.set(1)
            self.orthanc_backoff.succeeded()
            if not changes and last < self.progress.position:
                # Orthanc's log starts again below our position: a new Orthanc database.  Start from its beginning.
                _log.warning("Orthanc's changes end at %d, before our position %d: reading them from the start",
                             last, self.progress.position)
                self.progress.take_in([], 0)
                continue
            events = [(c.resource_id, c.change_type == STABLE_STUDY)
                      for c in changes if c.change_type in (STABLE_STUDY, NEW_STUDY)]
            position = max([c.seq for c in changes], default=self.progress.position)
            queued = self.progress.take_in(events, position)
            self.metrics.feed_position.set(position)
            if queued:
                _log.info("%d study round(s) queued (changes up to %d)", queued, position)
            if done or not changes:
                return

    def sweep_arriving(self) -> None:
        """Studies announced long ago but never reported stable (Orthanc restarted before its stability timer
        fired) are looked up: queued when stable, forgotten when deleted."""
        if time.monotonic() - self._last_sweep < self.options.arriving_grace / 4:
            return
        self._last_sweep = time.monotonic()
        for item in self.progress.arriving(self.options.arriving_grace):
            try:
                stable = self.orthanc.study_is_stable(item.study)
            except OrthancNotFound:
                self.progress.forget_arriving(item)
                continue
            if stable:
                _log.info("study %s is stable without a StableStudy change: queued", item.study)
                self.progress.mark_stable(item)

    def pull_corrections(self) -> None:
        """Every ``DERMSEG_REVIEW_PULL_EVERY`` seconds: the reviewers' SEGs from ``DERMSEG_REVIEW_PULL_FROM`` into
        the store."""
        target, store_dir = self.settings.review_pull_from, self.settings.edge_store
        if target is None or store_dir is None or time.monotonic() - self._last_pull < self.settings.review_pull_every:
            return
        self._last_pull = time.monotonic()
        if not (store_dir / "edge.sqlite").exists():
            return  # no case recorded yet: nothing waits for review
        from ..edge import EdgeStore
        from ..edge.pacs_pull import dicomweb_client_for, pull_corrections

        send = self.settings.send
        client = dicomweb_client_for(target, send.dicomweb_token if send else None, send.timeout if send else 30.0)
        try:
            with EdgeStore(store_dir, create=False) as store:
                pulled = pull_corrections(store, client)
        except Exception as error:  # server down, store busy: the next interval tries again; segmenting goes on
            _log.warning("pulling corrections from %s failed: %s: %s", target.label, type(error).__name__, error)
            return
        _log.info("corrections pulled from %s: %s (%d SEG(s) of our own left alone)", target.label,
                  pulled.report.summary(), pulled.own)

    def prune(self) -> None:
        """Retention of the work folder: rounds finished ``keep_days`` ago lose their folder (the results are in
        the PACS, the photos in Orthanc); checked at start and every ``prune_every`` seconds."""
        if time.monotonic() - self._last_prune < self.options.prune_every or self.options.keep_days == float("inf"):
            return
        self._last_prune = time.monotonic()
        try:
            pruned = rounds.prune_finished(self.work / "studies", self.progress, self.options.keep_days * 86400)
        except OSError as error:  # a disk problem is logged and tried again later, never stops the service
            _log.error("pruning %s/studies failed: %s", self.work, error)
            return
        if pruned:
            _log.info("%d finished round(s) older than %g day(s) deleted from %s/studies", pruned,
                      self.options.keep_days, self.work)

    # a round ---------------------------------------------------------------------------------------------------
    def folder(self, item: Round) -> Path:
        return self.work / "studies" / item.study / f"round-{item.round}"

    def run_round(self, item: Round) -> None:
        folder = self.folder(item)
        try:
            plan = rounds.plan_round(self.orthanc, item.study, self.progress.taken_instances(item.study))
        except OrthancNotFound:
            self._finish(item, FAILED, error="the study is no longer in Orthanc")
            return
        except OrthancUnavailable:
            raise
        except OrthancError as error:
            self._finish(item, FAILED, error=str(error))
            return
        if not plan.photos:
            self._finish(item, SKIPPED, plan.others, note=plan.reason, photos=0, other_instances=len(plan.others))
            return
        started = time.monotonic()
        try:
            size = rounds.download(self.orthanc, plan.photos, folder / "in", self.stop)
        except OrthancNotFound:  # deleted while we were downloading: the next round (if any) sees what is left
            self._finish(item, FAILED, error="instances were deleted from Orthanc during the download")
            return
        if size is None:
            return
        self.metrics.stage_seconds.labels(stage="download").observe(time.monotonic() - started)
        _log.info("study %s round %d: %d photo(s) downloaded (%.1f MB), %d other instance(s) left out; running the app",
                  item.study, item.round, len(plan.photos), size / 1e6, len(plan.others))
        self._run_app(self.progress.start_attempt(item), plan, folder)

    def _run_app(self, item: Round, plan: rounds.Plan, folder: Path) -> None:
        out = folder / "out"
        shutil.rmtree(out, ignore_errors=True)  # nothing of this round was sent yet: its outputs are remade whole
        out.mkdir(parents=True)
        log_path = folder / f"app-{item.attempts}.log"
        started = time.monotonic()
        status = rounds.run_app(rounds.app_command(folder / "in", out, self.model), self.child_env, log_path, self.stop)
        if status is None:
            self.progress.abandon_attempt(item)
            _log.info("study %s round %d: app run abandoned for the stop; it runs again at the next start",
                      item.study, item.round)
            return
        self.metrics.stage_seconds.labels(stage="app").observe(time.monotonic() - started)
        if status == 0:
            try:
                counts = rounds.case_counts(out)
            except (OSError, ValueError) as error:
                status, failure = -1, f"the app's results.json cannot be read: {error}"
        else:
            failure = rounds.app_failure(status, log_path)
        if status != 0:
            self.metrics.attempts_failed.inc()
            delay = self.options.retry_delay * 2 ** (item.attempts - 1)
            state = self.progress.attempt_failed(item, failure, self.options.max_attempts, delay)
            if state == FAILED:
                self.metrics.studies_failed.inc()
                _log.error("study %s round %d failed after %d attempt(s): %s", item.study, item.round, item.attempts,
                           failure)
            else:
                _log.warning("study %s round %d: attempt %d of %d failed (%s); next try in %.0f s", item.study,
                             item.round, item.attempts, self.options.max_attempts, failure, delay)
            return
        counts.update(photos=len(plan.photos), other_instances=len(plan.others))
        self.progress.app_done(item, plan.photos + plan.others, counts)
        self.metrics.add_cases(counts)
        _log.info("study %s round %d: %d segmented (%d for review), %d error(s) in %.1f s", item.study, item.round,
                  counts["cases_ok"], counts["review"], counts["cases_error"], time.monotonic() - started)

    def send_round(self, item: Round) -> None:
        out = self.folder(item) / "out"
        if not self.settings.send_to:
            self._finish(item, DONE, sent=0)
            return
        started = time.monotonic()
        try:
            summary = send_outputs(out, self.settings.send_to, options=self.settings.send)
        except (OSError, ValueError) as error:  # results.json gone or broken: nothing to send from
            self._finish(item, FAILED, error=f"cannot send: {error}")
            return
        self.metrics.stage_seconds.labels(stage="send").observe(time.monotonic() - started)
        if summary.ok:
            self.pacs_backoff.succeeded()
            self._finish(item, DONE, sent=summary.sent + summary.already_sent)
            shutil.rmtree(self.folder(item) / "in", ignore_errors=True)  # the photos are in Orthanc and the PACS
            return
        self.metrics.sends_failed.inc(len(summary.failed))
        reason = _send_failure(summary)
        delay = self.pacs_backoff.failed(f"{len(summary.failed)} transfer(s) of study {item.study} failed: {reason}")
        self.progress.send_failed(item, reason, delay)

    def _finish(self, item: Round, state: str, instances=(), **values) -> None:
        self.progress.finish(item, state, instances, **values)
        if state == DONE:
            self.metrics.studies_processed.inc()
        elif state == SKIPPED:
            self.metrics.studies_skipped.inc()
        else:
            self.metrics.studies_failed.inc()
        detail = values.get("note") or values.get("error") or ""
        log = _log.error if state == FAILED else _log.info
        log("study %s round %d: %s%s", item.study, item.round, state, f" ({detail})" if detail else "")

    # health ----------------------------------------------------------------------------------------------------
    def health(self, model_problem) -> Tuple[bool, dict]:
        try:
            self.orthanc.ping(timeout=3)
            orthanc = "ok"
        except OrthancError as error:
            orthanc = str(error)
        model = model_problem() or "ok"
        return orthanc == "ok" and model == "ok", {"orthanc": orthanc, "model": model}


def _send_failure(summary: SendSummary) -> str:
    reasons = sorted({f"{r['target']}: {r['error']}" for r in summary.failed})
    return "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
