# Copyright (c) the dermseg contributors. Apache-2.0.
"""The DICOMweb transport: STOW-RS over HTTP(S), with the standard library only.

Targets: ``http://host:port/dicom-web`` (the service root; ``/studies`` is appended) or
``https://user:password@host/dicom-web`` (HTTP basic authentication).  Without a user, a bearer token from
:class:`.options.SendOptions` is sent where there is one.  The password lives in the target only: never in its
``label``, its repr, results.json or a log line.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import uuid
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .options import SendOptions
from .outputs import DicomObject
from .transport import DELIVERED, Outcome, TargetURL

__all__ = ["EXAMPLE", "DicomWebTarget", "parse", "send", "stow_outcome"]

EXAMPLE = "http(s)://host:port/dicom-web (STOW-RS)"

_log = logging.getLogger(__package__)


@dataclass(frozen=True)
class DicomWebTarget:
    """A DICOMweb service reached by STOW-RS.  ``url`` is the service root and never holds credentials."""

    url: str
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.url).scheme

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


def parse(url: TargetURL) -> DicomWebTarget:
    parts = url.parts
    if not parts.hostname:
        raise url.error(f"no host; {url.example}")
    if parts.query or parts.fragment:
        raise url.error("give the DICOMweb service root without '?' or '#'")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if url.port is None else f"{host}:{url.port}"
    service_root = urllib.parse.urlunsplit((url.scheme, netloc, parts.path.rstrip("/"), "", ""))
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return DicomWebTarget(url=service_root, username=username, password=password)


def send(
    target: DicomWebTarget, objects: List[DicomObject], out_dir: Path, options: SendOptions
) -> Dict[DicomObject, Outcome]:
    """One STOW-RS request per object, so that each object's result is unambiguous and one large study never
    becomes one huge request.  A network failure stops the batch: the rest would only time out the same way."""
    outcomes: Dict[DicomObject, Outcome] = {}
    for index, obj in enumerate(objects):
        try:
            data = obj.file(out_dir).read_bytes()
        except OSError as error:
            outcomes[obj] = Outcome(f"cannot read {obj.path}: {error.strerror or error}")
            continue
        outcomes[obj] = outcome = _stow_one(target, data, obj, options)
        if outcome.unreachable:
            outcomes.update(dict.fromkeys(objects[index + 1 :], outcome))
            break
    return outcomes


def _stow_one(target: DicomWebTarget, data: bytes, obj: DicomObject, options: SendOptions) -> Outcome:
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
        return Outcome(f"cannot reach {target.stow_url}: {reason}", retryable=True, unreachable=True)
    return stow_outcome(status, payload, obj)


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


def stow_outcome(status: int, payload: bytes, obj: DicomObject) -> Outcome:
    """Read a STOW-RS response (PS3.18 10.5.3): HTTP status, then the Failed SOP Sequence for this instance."""
    failure = _stow_failure_reason(payload, obj.sop_instance_uid)
    if status in (200, 202) and failure is None:
        if status == 202:
            _log.warning("%s stored with warnings (HTTP 202)", obj.path)
        return DELIVERED
    if failure is not None:
        return Outcome(f"STOW-RS refused the instance (HTTP {status}): failure reason {failure}")
    excerpt = payload[:200].decode("utf-8", "replace").strip()
    detail = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in (401, 403):
        return Outcome(f"STOW-RS not authorised ({detail}); check the user, password or token")
    return Outcome(f"STOW-RS failed ({detail})", retryable=status in (408, 429) or status >= 500)


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
