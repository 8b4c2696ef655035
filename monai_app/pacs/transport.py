# Copyright (c) the dermseg contributors. Apache-2.0.
"""What a transport is: the contract between the sender and one way of moving DICOM objects to a PACS.

A transport is a module (:mod:`.dimse`, :mod:`.dicomweb`) registered for its URL schemes in
:data:`monai_app.pacs.targets.TRANSPORTS`; the sender knows no transport by name, it looks the target's scheme up
there.  A transport module provides:

``EXAMPLE``
    how its targets are written, for error messages: ``"dicom://AET@host:port (C-STORE)"``.
``parse(url: TargetURL) -> Target``
    its target from a URL whose scheme it is registered for (the port is already checked); a URL it cannot
    use raises ``url.error("what is wrong")``.
``send(target, objects, out_dir, options) -> Dict[DicomObject, Outcome]``
    one attempt to send ``objects`` (files under ``out_dir``), an :class:`Outcome` for each.  It never needs
    to raise: the sender retries the retryable outcomes, records every one, and turns an exception into an
    error outcome so that no run loses its records to a bug.

A target is a frozen dataclass (it is compared, to drop duplicates, and used as a key) with a ``scheme``, the
registry key of its transport, and a ``label``, the text that results.json and the logs show, never a password.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Protocol

if TYPE_CHECKING:
    from .options import SendOptions
    from .outputs import DicomObject

__all__ = ["DELIVERED", "Outcome", "Target", "TargetError", "TargetURL", "Transport"]


class TargetError(ValueError):
    """A send target (``DERMSEG_SEND_TO`` or ``--to``) that cannot be used; the message says why and how to fix it."""


class Target(Protocol):
    @property
    def scheme(self) -> str: ...

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class TargetURL:
    """A send target's URL, as a transport's ``parse`` gets it."""

    parts: urllib.parse.SplitResult
    scheme: str  # lower case
    port: Optional[int]  # None, or checked to be 1 to 65535
    shown: str  # the text as given, any password replaced by ***: fit for an error message
    example: str  # the syntax of every registered transport, for error messages

    def error(self, detail: str) -> TargetError:
        return TargetError(f"send target {self.shown!r}: {detail}")


@dataclass(frozen=True)
class Outcome:
    """How one attempt to send one object went.  ``retryable`` failures (network, PACS busy) are tried again."""

    error: Optional[str] = None
    retryable: bool = False
    unreachable: bool = False  # the target did not answer at all: the other objects would fare no better

    @property
    def sent(self) -> bool:
        return self.error is None


DELIVERED = Outcome()


class Transport(Protocol):
    EXAMPLE: str

    def parse(self, url: TargetURL) -> Target: ...

    def send(
        self, target: Target, objects: List["DicomObject"], out_dir: Path, options: "SendOptions"
    ) -> Dict["DicomObject", Outcome]: ...
