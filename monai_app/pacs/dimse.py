# Copyright (c) the dermseg contributors. Apache-2.0.
"""The DIMSE transport: C-STORE to a DICOM Storage SCP, with pynetdicom.  Targets: ``dicom://AET@host:port``.

AET is the PACS's (*called*) AE title; ours, the *calling* one, is in :class:`.options.SendOptions`.  All objects
for one target go over one association.  Failures are told in words a PACS administrator can act on: who refused
the association and why, whether anything answered at all, which SOP classes the PACS does not accept.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, Iterable, List

from .options import AE_TITLE, SendOptions
from .outputs import DicomObject
from .transport import DELIVERED, Outcome, TargetURL

__all__ = ["EXAMPLE", "DimseTarget", "parse", "send"]

EXAMPLE = "dicom://AET@host:port (C-STORE)"

_UNCOMPRESSED_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit, implicit VR little endian

_log = logging.getLogger(__package__)


@dataclass(frozen=True)
class DimseTarget:
    """A DICOM Storage SCP reached by C-STORE: its (called) AE title and network address."""

    scheme: ClassVar[str] = "dicom"

    called_aet: str
    host: str
    port: int

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{self.called_aet}@{host}:{self.port}"


def parse(url: TargetURL) -> DimseTarget:
    parts, example = url.parts, url.example
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise url.error(f"a DICOM target has no path or query; {example}")
    if parts.password is not None or not parts.username:
        raise url.error(f"give the PACS's AE title before '@'; {example}")
    called_aet = urllib.parse.unquote(parts.username).strip()
    if not AE_TITLE.match(called_aet):
        raise url.error(f"AE title {called_aet!r} must be 1 to 16 printable ASCII characters, no '\\'")
    if not parts.hostname:
        raise url.error(f"no host; {example}")
    if url.port is None:
        raise url.error(f"give the PACS's DICOM port (often 104 or 11112); {example}")
    return DimseTarget(called_aet=called_aet, host=parts.hostname, port=url.port)


def send(
    target: DimseTarget, objects: List[DicomObject], out_dir: Path, options: SendOptions, tls_args=None
) -> Dict[DicomObject, Outcome]:
    """One association for all ``objects``; each is read from its file just before it is sent.  ``tls_args``
    (an ``ssl.SSLContext`` and the server's host name, as pynetdicom takes them) puts the association on TLS."""
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
        tls_args=tls_args,
    )
    if not assoc.is_established:
        return dict.fromkeys(objects, _association_failure(assoc, target, bool(connected), options.timeout))

    outcomes: Dict[DicomObject, Outcome] = {}
    try:
        for obj in objects:
            if not assoc.is_established:
                outcomes[obj] = Outcome("the association was closed or aborted by the PACS", retryable=True)
                continue
            try:
                dataset = dcmread(obj.file(out_dir))
            except Exception as error:  # removed or damaged since it was listed: say so, and go on with the rest
                outcomes[obj] = Outcome(f"cannot read {obj.path}: {error}")
                continue
            try:
                status = assoc.send_c_store(dataset)
            except ValueError as error:  # no accepted presentation context, or the file cannot be encoded
                outcomes[obj] = Outcome(f"not sendable on this association: {error}")
                continue
            if "Status" not in status:  # no response within the timeout, or the association was aborted
                outcomes[obj] = Outcome("no C-STORE response (timeout or association aborted)", retryable=True)
                continue
            code = int(status.Status)
            category, description = STORAGE_SERVICE_CLASS_STATUS.get(code, (code_to_category(code), ""))
            if category in ("Success", "Warning"):
                if category == "Warning":
                    _log.warning("%s stored on %s with warning 0x%04X %s", obj.path, target.label, code, description)
                outcomes[obj] = DELIVERED
            else:
                comment = status.get("ErrorComment")
                outcomes[obj] = Outcome(
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


def _association_failure(assoc, target: DimseTarget, connected: bool, timeout: float) -> Outcome:
    """Why no association was established, in words a PACS administrator can act on."""
    if assoc.is_rejected:
        answer = assoc.acceptor.primitive
        permanent = getattr(answer, "result", None) == 0x01
        reason = getattr(answer, "reason_str", "no reason given")
        return Outcome(
            f"association rejected ({'permanent' if permanent else 'transient'}) by {target.label}: {reason} "
            f"(check the PACS's AE title and that it knows the calling AE title)",
            retryable=not permanent,
        )
    if not connected:
        return Outcome(f"cannot connect to {target.host}:{target.port}: {_connect_error(target, timeout)}", True)
    if assoc.is_aborted and assoc.accepted_contexts == [] and assoc.rejected_contexts:
        names = sorted({_sop_class_name(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        return Outcome(f"{target.label} accepts none of the SOP classes to send: {', '.join(names)}")
    return Outcome(f"association with {target.label} aborted or timed out during negotiation", retryable=True)


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
