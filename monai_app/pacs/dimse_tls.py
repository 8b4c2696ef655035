# Copyright (c) the dermseg contributors. Apache-2.0.
"""DICOM TLS: C-STORE over a TLS connection (the secure transport profiles of DICOM PS3.15 B), with pynetdicom.
Targets: ``dicom-tls://AET@host:port`` (the IANA port for DICOM over TLS is 2762).

Everything but the connection is the DIMSE transport's.  The PACS's certificate is always verified, host name
included, against ``SendOptions.tls_ca_file`` (``DERMSEG_TLS_CA_FILE``) or else the system's CA store; where the
PACS asks for a client certificate (mutual TLS) this edge presents ``tls_cert_file`` and ``tls_key_file``.  A
certificate that does not verify fails the association, and is not retried: it will not verify on the next try.
"""

from __future__ import annotations

import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Dict, List

from . import dimse
from .options import SendOptions
from .outputs import DicomObject
from .transport import Outcome, TargetURL

__all__ = ["EXAMPLE", "DimseTlsTarget", "parse", "send"]

EXAMPLE = "dicom-tls://AET@host:port (C-STORE over TLS)"


@dataclass(frozen=True)
class DimseTlsTarget(dimse.DimseTarget):
    scheme: ClassVar[str] = "dicom-tls"


def parse(url: TargetURL) -> DimseTlsTarget:
    return DimseTlsTarget(**asdict(dimse.parse(url)))


def tls_context(options: SendOptions) -> ssl.SSLContext:
    """A client context that verifies the PACS (certificate and host name) and presents ours where there is one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.tls_ca_file)
    if options.tls_cert_file:
        context.load_cert_chain(options.tls_cert_file, options.tls_key_file)
    return context


def send(target: DimseTlsTarget, objects: List[DicomObject], out_dir: Path, options: SendOptions) -> Dict[DicomObject, Outcome]:
    try:
        context = tls_context(options)
    except (OSError, ssl.SSLError) as error:  # a missing or unreadable certificate file: nothing to retry
        return dict.fromkeys(objects, Outcome(f"DICOM TLS to {target.label}: cannot load the TLS files: {error}"))
    outcomes = dimse.send(target, objects, out_dir, options, tls_args=(context, target.host))
    return {obj: _verification_failure(outcome, target) for obj, outcome in outcomes.items()}


def _verification_failure(outcome: Outcome, target: DimseTlsTarget) -> Outcome:
    """pynetdicom reports a failed TLS handshake as a connection that closed; say what to check, once."""
    if outcome.error and "closed during association" in outcome.error:
        return Outcome(f"{outcome.error}: the TLS handshake with {target.label} failed (is the PACS's certificate "
                       "signed by DERMSEG_TLS_CA_FILE and issued for this host name? does it want a client "
                       "certificate?)")
    return outcome
