# Copyright (c) the dermseg contributors. Apache-2.0.
"""Send the DICOM objects a run wrote in OUT to a PACS, by DIMSE C-STORE or by DICOMweb STOW-RS.

Where a MONAI Deploy Informatics Gateway runs the DICOM networking around the app, none of this is needed. Sites
without one (and edge boxes) set ``DERMSEG_SEND_TO`` and the app calls :func:`send_outputs` once its run is over.

Targets (several may be given, comma-separated in ``DERMSEG_SEND_TO``)::

    dicom://AET@host:port                 C-STORE to the SCP whose AE title is AET (the *called* AE title)
    http://host:port/dicom-web            STOW-RS to that DICOMweb service root (``/studies`` is appended)
    https://user:password@host/dicom-web  the same over TLS, with HTTP basic authentication

The *calling* AE title is ``DERMSEG_CALLING_AET`` (default ``DERMSEG``); a bearer token for DICOMweb may be given in
``DERMSEG_DICOMWEB_TOKEN``; ``DERMSEG_SEND_TIMEOUT`` (seconds, default 30), ``DERMSEG_SEND_RETRIES`` (extra attempts
after a transient failure, default 2) and ``DERMSEG_SEND_RETRY_DELAY`` (seconds before the first retry, doubling
after each, default 2) tune the sending.

A failed send loses nothing: the files stay in OUT and ``results.json`` gets a top-level ``"transfers"`` list with
one record per (object, target): what was sent, what failed and why.  Sending again (``python -m monai_app.send
OUT``) sends only what that list does not show as sent to that target.  The app's ``"cases"`` are never changed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from networks.durable import atomic_write_bytes

__all__ = [
    "DicomObject",
    "DicomWebTarget",
    "DimseTarget",
    "SendOptions",
    "SendSummary",
    "TargetError",
    "find_dicom_outputs",
    "parse_target",
    "parse_targets",
    "send_outputs",
]

ENV_SEND_TO = "DERMSEG_SEND_TO"
ENV_CALLING_AET = "DERMSEG_CALLING_AET"
ENV_SEND_TIMEOUT = "DERMSEG_SEND_TIMEOUT"
ENV_SEND_RETRIES = "DERMSEG_SEND_RETRIES"
ENV_SEND_RETRY_DELAY = "DERMSEG_SEND_RETRY_DELAY"
ENV_DICOMWEB_TOKEN = "DERMSEG_DICOMWEB_TOKEN"

DEFAULT_CALLING_AET = "DERMSEG"
RESULTS_FILE = "results.json"
SENT = "sent"
FAILED = "failed"

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_UNCOMPRESSED_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR little endian

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------- targets
class TargetError(ValueError):
    """A send target (``DERMSEG_SEND_TO`` or ``--to``) that cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class DimseTarget:
    """A DICOM Storage SCP reached by C-STORE: its (called) AE title and network address."""

    called_aet: str
    host: str
    port: int

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"dicom://{self.called_aet}@{host}:{self.port}"


@dataclass(frozen=True)
class DicomWebTarget:
    """A DICOMweb service reached by STOW-RS.  ``url`` is the service root and never holds credentials."""

    url: str
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)

    @property
    def stow_url(self) -> str:
        return self.url if self.url.endswith("/studies") else self.url.rstrip("/") + "/studies"

    @property
    def label(self) -> str:
        """The URL as recorded in results.json and logs: with the user name, if any, but never the password."""
        if not self.username:
            return self.url
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{urllib.parse.quote(self.username)}@{parts.netloc}"))


Target = Union[DimseTarget, DicomWebTarget]

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or control characters, and
# leading/trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def parse_target(text: str) -> Target:
    """One target: ``dicom://AET@host:port`` or ``http(s)://[user:password@]host[:port]/path``."""
    text = text.strip()
    example = "expected dicom://AET@host:port (C-STORE) or http(s)://host:port/dicom-web (STOW-RS)"
    if not text:
        raise TargetError(f"empty send target: {example}")
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    shown = _without_password(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise TargetError(f"send target {shown!r}: the port must be a number from 1 to 65535")
    if scheme == "dicom":
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise TargetError(f"send target {shown!r}: a DICOM target has no path or query; {example}")
        if parts.password is not None or not parts.username:
            raise TargetError(f"send target {shown!r}: give the PACS's AE title before '@'; {example}")
        called_aet = urllib.parse.unquote(parts.username).strip()
        if not _AE_TITLE.match(called_aet):
            raise TargetError(
                f"send target {shown!r}: AE title {called_aet!r} must be 1 to 16 printable ASCII characters, no '\\'"
            )
        if not parts.hostname:
            raise TargetError(f"send target {shown!r}: no host; {example}")
        if port is None:
            raise TargetError(f"send target {shown!r}: give the PACS's DICOM port (often 104 or 11112); {example}")
        return DimseTarget(called_aet=called_aet, host=parts.hostname, port=port)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise TargetError(f"send target {shown!r}: no host; {example}")
        if parts.query or parts.fragment:
            raise TargetError(f"send target {shown!r}: give the DICOMweb service root without '?' or '#'")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host if port is None else f"{host}:{port}"
        url = urllib.parse.urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))
        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        return DicomWebTarget(url=url, username=username, password=password)
    raise TargetError(f"send target {shown!r}: unknown scheme {parts.scheme or '(none)'!r}; {example}")


def parse_targets(spec: Union[str, Iterable[str], None]) -> List[Target]:
    """Targets from a comma-separated string (as in ``DERMSEG_SEND_TO``) or a list of such strings.

    Duplicates are dropped (so one object is not sent twice to one place); ``None`` or an empty string gives [].
    """
    if spec is None:
        return []
    pieces = [spec] if isinstance(spec, str) else list(spec)
    targets: List[Target] = []
    for piece in pieces:
        for text in piece.split(","):
            if text.strip():
                target = parse_target(text)
                if target not in targets:
                    targets.append(target)
    return targets


def _without_password(text: str) -> str:
    """``text`` with any password in a URL's user information replaced by ``***`` (for error messages)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", text.strip())


# --------------------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SendOptions:
    calling_aet: str = DEFAULT_CALLING_AET
    timeout: float = 30.0  # seconds, for connecting and for each response
    retries: int = 2  # extra attempts after a transient failure (network down, PACS busy)
    retry_delay: float = 2.0  # seconds before the first retry; doubles after each
    dicomweb_token: Optional[str] = field(default=None, repr=False)  # sent as "Authorization: Bearer ..."

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides) -> "SendOptions":
        """Options from the ``DERMSEG_*`` variables; keyword arguments that are not None take precedence."""
        environ = os.environ if environ is None else environ
        defaults = cls()
        values = {
            "calling_aet": environ.get(ENV_CALLING_AET, "").strip() or defaults.calling_aet,
            "timeout": _number(environ, ENV_SEND_TIMEOUT, defaults.timeout, float, minimum=0.1),
            "retries": _number(environ, ENV_SEND_RETRIES, defaults.retries, int, minimum=0),
            "retry_delay": _number(environ, ENV_SEND_RETRY_DELAY, defaults.retry_delay, float, minimum=0.0),
            "dicomweb_token": environ.get(ENV_DICOMWEB_TOKEN) or None,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def __post_init__(self):
        if not _AE_TITLE.match(self.calling_aet):
            raise TargetError(
                f"calling AE title {self.calling_aet!r} ({ENV_CALLING_AET}) must be 1 to 16 printable ASCII "
                "characters, no '\\'"
            )
        if self.timeout <= 0 or self.retries < 0 or self.retry_delay < 0:
            raise TargetError(
                f"send options out of range: timeout {self.timeout} must be > 0, retries {self.retries} and "
                f"retry delay {self.retry_delay} must be >= 0"
            )


def _number(environ: Mapping[str, str], name: str, default, kind, minimum):
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise TargetError(f"{name}={raw!r} must be a {'whole ' if kind is int else ''}number >= {minimum}")
    return value


# ----------------------------------------------------------------------------------------------------- the objects
@dataclass(frozen=True)
class DicomObject:
    """A DICOM file the run wrote, as the sender needs it.  ``path`` is relative to OUT, with '/' separators."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    @property
    def send_rank(self) -> int:
        """Sources first, then SEGs (which reference them), then SRs (which reference both): a PACS that checks
        references, or a viewer watching the study fill up, sees every object after what it points to."""
        if self.sop_class_uid.startswith(_SR_SOP_CLASS_PREFIX):
            return 2
        return 1 if self.sop_class_uid == SEGMENTATION_STORAGE else 0


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file: a 128-byte preamble then ``DICM`` (what the app writes)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_results(out_dir: Path) -> dict:
    path = Path(out_dir) / RESULTS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {out_dir} the output folder of a dermseg run?") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); nothing sent") from None
    if not isinstance(document, dict) or not isinstance(document.get("cases", []), list):
        raise ValueError(f"{path} has no 'cases' list; nothing sent")
    return document


def find_dicom_outputs(out_dir: Path, results: Optional[dict] = None) -> List[DicomObject]:
    """The DICOM files among the outputs that results.json lists, in the order they should be sent.

    Files are recognised by their content (preamble and ``DICM``), not by the output's name or extension, so a
    PNG overlay is left out and a new kind of DICOM output is sent without changes here.  An output that points
    outside OUT or no longer exists is logged and left out.
    """
    out_dir = Path(out_dir)
    results = read_results(out_dir) if results is None else results
    root = out_dir.resolve()
    objects: Dict[str, DicomObject] = {}
    for case in results.get("cases", []):
        outputs = case.get("outputs") if isinstance(case, dict) else None
        for relative in _output_paths(outputs):
            path = (out_dir / relative).resolve()
            if not path.is_relative_to(root):
                _log.warning("results.json output %r lies outside %s: not sent", relative, out_dir)
                continue
            key = path.relative_to(root).as_posix()
            if key in objects:
                continue
            if not path.is_file():
                _log.warning("results.json lists %s but the file is missing: not sent", key)
                continue
            if is_dicom_file(path):
                objects[key] = _describe(path, key)
    return sorted(objects.values(), key=lambda obj: obj.send_rank)  # stable: the app's order within a rank


def _output_paths(outputs) -> Iterable[str]:
    """Every path string in a case's ``outputs`` (a dict of kind -> path; lists tolerated)."""
    if isinstance(outputs, str):
        yield outputs
    elif isinstance(outputs, Mapping):
        for value in outputs.values():
            yield from _output_paths(value)
    elif isinstance(outputs, (list, tuple)):
        for value in outputs:
            yield from _output_paths(value)


def _describe(path: Path, relative: str) -> DicomObject:
    from pydicom import dcmread

    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    file_meta = meta.file_meta
    return DicomObject(
        path=relative,
        sop_class_uid=str(getattr(file_meta, "MediaStorageSOPClassUID", "") or meta.get("SOPClassUID", "")),
        sop_instance_uid=str(getattr(file_meta, "MediaStorageSOPInstanceUID", "") or meta.get("SOPInstanceUID", "")),
        transfer_syntax_uid=str(file_meta.TransferSyntaxUID),
    )


# ---------------------------------------------------------------------------------------------- transfer records
@dataclass(frozen=True)
class _Outcome:
    """How one attempt to send one object went.  ``retryable`` failures (network, PACS busy) are tried again."""

    error: Optional[str] = None
    retryable: bool = False
    unreachable: bool = False  # the target did not answer at all: the other objects would fare no better

    @property
    def sent(self) -> bool:
        return self.error is None


_SENT = _Outcome()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _is_sent(record: Optional[dict], obj: DicomObject) -> bool:
    """Sent to this target already, and the file still holds the instance that was sent (a rerun of the app into
    the same OUT writes new instances at the same paths, and those must be sent)."""
    return bool(record) and record.get("status") == SENT and record.get("sop_instance_uid") == obj.sop_instance_uid


def _record(previous: Optional[dict], obj: DicomObject, target: Target, outcome: _Outcome, attempts: int) -> dict:
    same_instance = previous and previous.get("sop_instance_uid") == obj.sop_instance_uid
    return {
        "path": obj.path,
        "sop_class_uid": obj.sop_class_uid,
        "sop_instance_uid": obj.sop_instance_uid,
        "target": target.label,
        "status": SENT if outcome.sent else FAILED,
        "error": outcome.error,
        "attempts": (previous.get("attempts", 0) if same_instance else 0) + attempts,
        "time": _now(),
    }


def _save_transfers(out_dir: Path, records: Dict[Tuple[str, str], dict]) -> None:
    """Merge ``records`` into results.json's ``transfers``, re-reading the file so nothing else in it is lost."""
    document = read_results(out_dir)
    merged = {(r.get("path"), r.get("target")): r for r in document.get("transfers", []) if isinstance(r, dict)}
    merged.update(records)
    document["transfers"] = list(merged.values())
    atomic_write_bytes(Path(out_dir) / RESULTS_FILE, json.dumps(document, indent=2).encode("utf-8"))


class _OutputFolderLock:
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


# --------------------------------------------------------------------------------------------------------- summary
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


# ------------------------------------------------------------------------------------------------------- sending
def send_outputs(
    out_dir: Union[str, Path],
    targets: Union[str, Sequence[str], None] = None,
    *,
    calling_aet: Optional[str] = None,
    timeout: Optional[float] = None,
    retries: Optional[int] = None,
    retry_delay: Optional[float] = None,
    dicomweb_token: Optional[str] = None,
) -> SendSummary:
    """Send every DICOM output of the run in ``out_dir`` to every target that does not have it yet.

    ``targets`` is a comma-separated string or a list of them (default: ``DERMSEG_SEND_TO``); the options default
    to the ``DERMSEG_*`` variables described in this module's docstring.  Send failures never raise: they are
    recorded in results.json's ``transfers`` and returned in the summary, and the files stay in OUT for a later
    retry.  A bad target or option raises :class:`TargetError` before anything is sent; a missing or unreadable
    results.json raises FileNotFoundError or ValueError.
    """
    out_dir = Path(out_dir)
    parsed = parse_targets(os.environ.get(ENV_SEND_TO) if targets is None else targets)
    options = SendOptions.from_env(
        calling_aet=calling_aet,
        timeout=timeout,
        retries=retries,
        retry_delay=retry_delay,
        dicomweb_token=dicomweb_token,
    )
    summary = SendSummary(targets=[t.label for t in parsed])
    if not parsed:
        _log.info("no send target given (%s): nothing sent", ENV_SEND_TO)
        return summary
    read_results(out_dir)  # a missing or broken results.json is reported before anything else happens
    with _OutputFolderLock(out_dir):
        results = read_results(out_dir)  # again, now that no other sender can be writing it
        objects = find_dicom_outputs(out_dir, results)
        summary.objects = len(objects)
        existing = {(r.get("path"), r.get("target")): r for r in results.get("transfers", []) if isinstance(r, dict)}
        for target in parsed:
            pending = [obj for obj in objects if not _is_sent(existing.get((obj.path, target.label)), obj)]
            summary.already_sent += len(objects) - len(pending)
            if not pending:
                continue
            _log.info("sending %d DICOM object(s) to %s", len(pending), target.label)
            outcomes, attempts = _send_with_retries(target, pending, out_dir, options)
            records = {}
            for obj in pending:
                previous = existing.get((obj.path, target.label))
                record = _record(previous, obj, target, outcomes[obj], attempts[obj])
                records[(obj.path, target.label)] = record
                if outcomes[obj].sent:
                    summary.sent += 1
                else:
                    summary.failed.append(record)
                    _log.warning("not sent to %s: %s (%s)", target.label, obj.path, outcomes[obj].error)
            _save_transfers(out_dir, records)  # after each target: a crash later still keeps these records
    _log.info("PACS send: %s", summary)
    return summary


def _send_with_retries(
    target: Target, objects: List[DicomObject], out_dir: Path, options: SendOptions
) -> Tuple[Dict[DicomObject, _Outcome], Dict[DicomObject, int]]:
    send = _send_by_c_store if isinstance(target, DimseTarget) else _send_by_stow_rs
    outcomes: Dict[DicomObject, _Outcome] = {}
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
            outcomes.update({obj: _Outcome(f"unexpected error: {error!r}", retryable=False) for obj in pending})
        pending = [obj for obj in pending if outcomes[obj].retryable]
        if not pending:
            break
    return outcomes, attempts


# C-STORE -----------------------------------------------------------------------------------------------------------
def _send_by_c_store(
    target: DimseTarget, objects: List[DicomObject], out_dir: Path, options: SendOptions
) -> Dict[DicomObject, _Outcome]:
    """One association for all ``objects``; each is read from its file just before it is sent."""
    from pydicom import dcmread
    from pynetdicom import AE, evt
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    ae = AE(ae_title=options.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = options.timeout
    for sop_class, transfer_syntaxes in _presentation_contexts(objects).items():
        ae.add_requested_context(sop_class, transfer_syntaxes)

    connected = []
    assoc = ae.associate(
        target.host,
        target.port,
        ae_title=target.called_aet,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.append(True))],
    )
    if not assoc.is_established:
        return dict.fromkeys(objects, _association_failure(assoc, target, bool(connected), options.timeout))

    outcomes: Dict[DicomObject, _Outcome] = {}
    try:
        for obj in objects:
            if not assoc.is_established:
                outcomes[obj] = _Outcome("the association was closed or aborted by the PACS", retryable=True)
                continue
            try:
                dataset = dcmread(out_dir / obj.path)
            except Exception as error:  # removed or damaged since it was listed: say so, and go on with the rest
                outcomes[obj] = _Outcome(f"cannot read {obj.path}: {error}")
                continue
            try:
                status = assoc.send_c_store(dataset)
            except ValueError as error:  # no accepted presentation context, or the file cannot be encoded
                outcomes[obj] = _Outcome(f"not sendable on this association: {error}")
                continue
            if "Status" not in status:  # no response within the timeout, or the association was aborted
                outcomes[obj] = _Outcome("no C-STORE response (timeout or association aborted)", retryable=True)
                continue
            code = int(status.Status)
            category, description = STORAGE_SERVICE_CLASS_STATUS.get(code, (code_to_category(code), ""))
            if category in ("Success", "Warning"):
                if category == "Warning":
                    _log.warning("%s stored on %s with warning 0x%04X %s", obj.path, target.label, code, description)
                outcomes[obj] = _SENT
            else:
                comment = status.get("ErrorComment")
                outcomes[obj] = _Outcome(
                    f"C-STORE refused: status 0x{code:04X} {description or category}"
                    + (f" ({comment})" if comment else ""),
                    retryable=0xA700 <= code <= 0xA7FF,  # out of resources: the PACS may have room later
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _presentation_contexts(objects: Iterable[DicomObject]) -> Dict[str, List[str]]:
    """Per SOP class, the transfer syntaxes to propose: the files' own, plus both uncompressed little-endian
    syntaxes when a file is uncompressed (pynetdicom converts between those, so the PACS may pick either)."""
    contexts: Dict[str, List[str]] = {}
    for obj in objects:
        syntaxes = contexts.setdefault(obj.sop_class_uid, [])
        extra = _UNCOMPRESSED_TRANSFER_SYNTAXES if obj.transfer_syntax_uid in _UNCOMPRESSED_TRANSFER_SYNTAXES else ()
        for syntax in (obj.transfer_syntax_uid, *extra):
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    return contexts


def _association_failure(assoc, target: DimseTarget, connected: bool, timeout: float) -> _Outcome:
    """Why no association was established, in words a PACS administrator can act on."""
    if assoc.is_rejected:
        answer = assoc.acceptor.primitive
        permanent = getattr(answer, "result", None) == 0x01
        reason = getattr(answer, "reason_str", "no reason given")
        return _Outcome(
            f"association rejected ({'permanent' if permanent else 'transient'}) by {target.label}: {reason} "
            f"(check the PACS's AE title and that it knows the calling AE title)",
            retryable=not permanent,
        )
    if not connected:
        return _Outcome(f"cannot connect to {target.host}:{target.port}: {_connect_error(target, timeout)}", True)
    if assoc.is_aborted and assoc.accepted_contexts == [] and assoc.rejected_contexts:
        names = sorted({_sop_class_name(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        return _Outcome(f"{target.label} accepts none of the SOP classes to send: {', '.join(names)}")
    return _Outcome(f"association with {target.label} aborted or timed out during negotiation", retryable=True)


def _connect_error(target: DimseTarget, timeout: float) -> str:
    """pynetdicom only logs why a TCP connection failed; try once more, plainly, to say why (refused, timeout, ...)."""
    import socket

    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            return "the connection was closed during association"
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


# STOW-RS -----------------------------------------------------------------------------------------------------------
def _send_by_stow_rs(
    target: DicomWebTarget, objects: List[DicomObject], out_dir: Path, options: SendOptions
) -> Dict[DicomObject, _Outcome]:
    """One STOW-RS request per object, so that each object's result is unambiguous and one large study never
    becomes one huge request.  A network failure stops the batch: the rest would only time out the same way."""
    outcomes: Dict[DicomObject, _Outcome] = {}
    for index, obj in enumerate(objects):
        try:
            data = (out_dir / obj.path).read_bytes()
        except OSError as error:
            outcomes[obj] = _Outcome(f"cannot read {obj.path}: {error.strerror or error}")
            continue
        outcomes[obj] = outcome = _stow_one(target, data, obj, options)
        if outcome.unreachable:
            outcomes.update(dict.fromkeys(objects[index + 1 :], outcome))
            break
    return outcomes


def _stow_one(target: DicomWebTarget, data: bytes, obj: DicomObject, options: SendOptions) -> _Outcome:
    body, content_type = _multipart_related(data)
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if target.username is not None:
        credentials = f"{target.username}:{target.password or ''}".encode("utf-8")
        headers["Authorization"] = "Basic " + b64encode(credentials).decode("ascii")
    elif options.dicomweb_token:
        headers["Authorization"] = f"Bearer {options.dicomweb_token}"
    request = urllib.request.Request(target.stow_url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=options.timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:  # refused, unreachable, DNS, TLS, timeout
        reason = getattr(error, "reason", None) or error
        return _Outcome(f"cannot reach {target.stow_url}: {reason}", retryable=True, unreachable=True)
    return _stow_outcome(status, payload, obj)


def _multipart_related(data: bytes) -> Tuple[bytes, str]:
    """A STOW-RS request body (PS3.18 10.5): one ``application/dicom`` part, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    while boundary.encode("ascii") in data:  # practically never, but a boundary must not occur in the content
        boundary = uuid.uuid4().hex
    body = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"),
            data,
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        )
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _stow_outcome(status: int, payload: bytes, obj: DicomObject) -> _Outcome:
    """Read a STOW-RS response (PS3.18 10.5.3): HTTP status, then the Failed SOP Sequence for this instance."""
    failure = _stow_failure_reason(payload, obj.sop_instance_uid)
    if status in (200, 202) and failure is None:
        if status == 202:
            _log.warning("%s stored with warnings (HTTP 202)", obj.path)
        return _SENT
    if failure is not None:
        return _Outcome(f"STOW-RS refused the instance (HTTP {status}): failure reason {failure}")
    excerpt = payload[:200].decode("utf-8", "replace").strip()
    detail = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in (401, 403):
        return _Outcome(f"STOW-RS not authorised ({detail}); check the user, password or token")
    return _Outcome(f"STOW-RS failed ({detail})", retryable=status in (408, 429) or status >= 500)


def _stow_failure_reason(payload: bytes, sop_instance_uid: str) -> Optional[str]:
    """The Failure Reason (0008,1197) the server gave for this instance, if it lists it as failed."""
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    for item in (document.get("00081198") or {}).get("Value", []) if isinstance(document, dict) else []:
        uid = (item.get("00081155") or {}).get("Value", [None])[0]
        if uid in (None, sop_instance_uid):
            reason = (item.get("00081197") or {}).get("Value", ["unknown"])[0]
            return f"0x{reason:04X}" if isinstance(reason, int) else str(reason)
    return None
