# Copyright (c) the dermseg contributors. Apache-2.0.
"""Send targets, and the registry of transports by URL scheme.

A target is a URL whose scheme picks the transport that parses it and sends to it: the sender knows transports
only through :data:`TRANSPORTS`.  Adding a way to send (a new protocol, a vendor API) is one new module that
follows the contract of :mod:`.transport` plus one entry here; parsing, the per-target records and the retries
come with it.  What every target shares (the port range, hiding a password in error messages) is checked here,
before the transport sees the URL.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Dict, Iterable, List, Union

from . import dicomweb, dimse, dimse_tls
from .transport import Target, TargetError, TargetURL, Transport

__all__ = ["TRANSPORTS", "parse_target", "parse_targets", "transport_for"]

# URL scheme -> transport module.  One line per scheme; a target's ``scheme`` finds its transport again.
TRANSPORTS: Dict[str, Transport] = {"dicom": dimse, "dicom-tls": dimse_tls, "http": dicomweb, "https": dicomweb}


def transport_for(target: Target) -> Transport:
    return TRANSPORTS[target.scheme]


def parse_target(text: str) -> Target:
    """One target, e.g. ``dicom://AET@host:port`` or ``http(s)://[user:password@]host[:port]/path``."""
    text = text.strip()
    example = _example()
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
    transport = TRANSPORTS.get(scheme)
    if transport is None:
        raise TargetError(f"send target {shown!r}: unknown scheme {parts.scheme or '(none)'!r}; {example}")
    return transport.parse(TargetURL(parts=parts, scheme=scheme, port=port, shown=shown, example=example))


def parse_targets(spec: Union[str, Iterable[Union[str, Target]], None]) -> List[Target]:
    """Targets from a comma-separated string (as in ``DERMSEG_SEND_TO``) or a list of such strings (or of targets
    already parsed).

    Duplicates are dropped (so one object is not sent twice to one place); ``None`` or an empty string gives [].
    """
    if spec is None:
        return []
    pieces = [spec] if isinstance(spec, str) else list(spec)
    targets: List[Target] = []
    for piece in pieces:
        for target in _parse_piece(piece):
            if target not in targets:
                targets.append(target)
    return targets


def _parse_piece(piece: Union[str, Target]) -> List[Target]:
    if not isinstance(piece, str):
        return [piece]
    return [parse_target(text) for text in piece.split(",") if text.strip()]


def _example() -> str:
    """``expected A or B``: each registered transport's syntax, once, in registration order."""
    examples = list(dict.fromkeys(transport.EXAMPLE for transport in TRANSPORTS.values()))
    listed = examples[-1] if len(examples) == 1 else ", ".join(examples[:-1]) + " or " + examples[-1]
    return f"expected {listed}"


def _without_password(text: str) -> str:
    """``text`` with any password in a URL's user information replaced by ``***`` (for error messages)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", text.strip())
