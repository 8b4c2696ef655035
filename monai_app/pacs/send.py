# Copyright (c) the dermseg contributors. Apache-2.0.
"""Sending a run's DICOM outputs to every target that does not have them yet, and what came of it.

For each target, whatever its transport: the objects not yet recorded as sent to it are sent, transient failures
are retried with a doubling delay, and every outcome is recorded in results.json before the next target.  Send
failures never raise; only a target or option that cannot be used, or a run without a readable results.json,
stops the sending before anything is sent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from .options import SendOptions
from .outputs import DicomObject, OutputSelection, find_dicom_outputs, read_results
from .targets import parse_targets, transport_for
from .transfers import OutputFolderLock, is_sent, recorded_transfers, save_transfers, transfer_record
from .transport import Outcome, Target

__all__ = ["SendSummary", "send_outputs"]

_log = logging.getLogger(__package__)


@dataclass
class SendSummary:
    """What :func:`send_outputs` did.  ``ok`` is True when every DICOM output is now on every target."""

    targets: List[str] = field(default_factory=list)
    objects: int = 0  # DICOM outputs found in OUT
    sent: int = 0  # transfers that succeeded in this call
    already_sent: int = 0  # transfers recorded as sent by an earlier call, not repeated
    failed: List[dict] = field(default_factory=list)  # the transfer records of this call's failures

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        text = (
            f"{self.objects} DICOM object(s) to {len(self.targets)} target(s): {self.sent} sent, "
            f"{self.already_sent} already sent, {len(self.failed)} failed"
        )
        reasons = sorted({f"{r['target']}: {r['error']}" for r in self.failed})
        return text + "".join(f"\n  failed {reason}" for reason in reasons)


def send_outputs(
    out_dir: Union[str, Path],
    targets: Union[str, Iterable[Union[str, Target]], None] = None,
    *,
    options: Optional[SendOptions] = None,
    calling_aet: Optional[str] = None,
    timeout: Optional[float] = None,
    retries: Optional[int] = None,
    retry_delay: Optional[float] = None,
    dicomweb_token: Optional[str] = None,
    select: Optional[OutputSelection] = None,
) -> SendSummary:
    """Send every DICOM output of the run in ``out_dir`` to every target that does not have it yet.

    ``targets`` is a comma-separated string, or a list of them or of parsed targets (None: no target, nothing is
    sent).  ``select`` narrows what is sent (the review destination's: ``review_selection``); default: every
    DICOM output.  ``options`` default to :class:`SendOptions`' defaults (the app passes the ones
    ``monai_app.settings`` read from ``DERMSEG_*``); the keyword arguments that are not None override single
    options.  Send failures never raise: they are recorded in results.json's ``transfers`` and returned in the
    summary, and the files stay in OUT for a later retry.  A bad target or option raises :class:`TargetError`
    before anything is sent; a missing or unreadable results.json raises FileNotFoundError or ValueError.
    """
    out_dir = Path(out_dir)
    parsed = parse_targets(targets)
    options = (options or SendOptions()).updated(
        calling_aet=calling_aet,
        timeout=timeout,
        retries=retries,
        retry_delay=retry_delay,
        dicomweb_token=dicomweb_token,
    )
    summary = SendSummary(targets=[t.label for t in parsed])
    if not parsed:
        _log.info("no send target given: nothing sent")
        return summary
    read_results(out_dir)  # a missing or broken results.json is reported before anything else happens
    with OutputFolderLock(out_dir):
        results = read_results(out_dir)  # again, now that no other sender can be writing it
        objects = find_dicom_outputs(out_dir, results, select)
        summary.objects = len(objects)
        existing = recorded_transfers(results)
        for target in parsed:
            pending = [obj for obj in objects if not is_sent(existing.get((obj.path, target.label)), obj)]
            summary.already_sent += len(objects) - len(pending)
            if not pending:
                continue
            _log.info("sending %d DICOM object(s) to %s", len(pending), target.label)
            outcomes, attempts = _send_with_retries(target, pending, out_dir, options)
            records = {}
            for obj in pending:
                previous = existing.get((obj.path, target.label))
                record = transfer_record(previous, obj, target, outcomes[obj], attempts[obj])
                records[(obj.path, target.label)] = record
                if outcomes[obj].sent:
                    summary.sent += 1
                else:
                    summary.failed.append(record)
                    _log.warning("not sent to %s: %s (%s)", target.label, obj.path, outcomes[obj].error)
            save_transfers(out_dir, records)  # after each target: a crash later still keeps these records
    _log.info("PACS send: %s", summary)
    return summary


def _send_with_retries(
    target: Target, objects: List[DicomObject], out_dir: Path, options: SendOptions
) -> Tuple[Dict[DicomObject, Outcome], Dict[DicomObject, int]]:
    send = transport_for(target).send
    outcomes: Dict[DicomObject, Outcome] = {}
    attempts = {obj: 0 for obj in objects}
    pending = list(objects)
    for attempt in range(options.retries + 1):
        if attempt:
            delay = options.retry_delay * 2 ** (attempt - 1)
            _log.info("retrying %d object(s) to %s in %.1f s", len(pending), target.label, delay)
            time.sleep(delay)
        for obj in pending:
            attempts[obj] += 1
        try:
            outcomes.update(send(target, pending, out_dir, options))
        except Exception as error:  # a bug or an unforeseen library error must not lose the records of the run
            _log.exception("sending to %s failed unexpectedly", target.label)
            outcomes.update({obj: Outcome(f"unexpected error: {error!r}", retryable=False) for obj in pending})
        pending = [obj for obj in pending if outcomes[obj].retryable]
        if not pending:
            break
    return outcomes, attempts
