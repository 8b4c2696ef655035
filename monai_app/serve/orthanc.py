# Copyright (c) the dermseg contributors. Apache-2.0.
"""The little of Orthanc's REST API the service uses, over ``urllib``: the changes feed, a study's series and
instances, an instance's SOP class and file.

Errors come in two kinds, because the service treats them differently: :class:`OrthancUnavailable` (nothing
answers, a timeout, HTTP 5xx, credentials refused) is waited out with backoff and never counts against a study;
:class:`OrthancNotFound` (HTTP 404: the resource was deleted) is an answer about that study.  Credentials come
from :func:`monai_app.settings.orthanc_credentials_from_env`, never from the URL (which is on the command line
and in the log); messages name the URL without them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = ["Change", "OrthancClient", "OrthancError", "OrthancNotFound", "OrthancUnavailable", "check_orthanc_url"]

CHUNK = 1 << 20


class OrthancError(Exception):
    """Orthanc answered something the service cannot use."""


class OrthancUnavailable(OrthancError):
    """Orthanc could not be asked: down, unreachable, overloaded, or it refused the credentials."""


class OrthancNotFound(OrthancError):
    """HTTP 404: the resource is not (or no longer) in Orthanc."""


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: str  # NewStudy, StableStudy, ...
    resource_id: str  # Orthanc's id of the resource (a hash of its DICOM UIDs: not patient data)


def check_orthanc_url(url: str) -> str:
    """``url`` without a trailing slash; a ValueError for anything but http(s)://host[:port][/path] without
    credentials (they belong in the environment: the command line is visible to every user of the machine)."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--orthanc {url!r}: expected http(s)://host:port of Orthanc's REST API")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "--orthanc must not hold credentials: set DERMSEG_ORTHANC_USER and DERMSEG_ORTHANC_PASSWORD_FILE"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"--orthanc {url!r}: no query or fragment expected")
    return url.strip().rstrip("/")


@dataclass
class OrthancClient:
    url: str
    credentials: Optional[Tuple[str, str]] = field(default=None, repr=False)
    timeout: float = 30.0

    def __post_init__(self):
        self.url = check_orthanc_url(self.url)

    # the calls -------------------------------------------------------------------------------------------------
    def ping(self, timeout: float = 3.0) -> None:
        """Raises OrthancUnavailable unless Orthanc answers ``GET /system``."""
        self._json("/system", timeout=timeout)

    def changes(self, since: int, limit: int = 100) -> Tuple[List[Change], int, bool]:
        """One page of the changes feed after ``since``: (changes, last seq, done)."""
        answer = self._json(f"/changes?since={int(since)}&limit={int(limit)}")
        changes = [
            Change(int(item["Seq"]), str(item["ChangeType"]), str(item["ID"])) for item in answer.get("Changes", [])
        ]
        return changes, int(answer.get("Last", since)), bool(answer.get("Done", True))

    def study_is_stable(self, study_id: str) -> bool:
        return bool(self._json(f"/studies/{_id(study_id)}").get("IsStable"))

    def study_series(self, study_id: str) -> List[dict]:
        """The study's series: ``MainDicomTags`` (Modality, Manufacturer, ...) and ``Instances`` (ids)."""
        return self._json(f"/studies/{_id(study_id)}/series")

    def sop_class_uid(self, instance_id: str) -> str:
        """From Orthanc's index (its ``SopClassUid`` metadata): no file is read."""
        return self._request(f"/instances/{_id(instance_id)}/metadata/SopClassUid").decode("ascii", "replace").strip()

    def download(self, instance_id: str, destination: Path) -> int:
        """The instance's DICOM file, written to a temporary name and renamed into place; returns its size."""
        destination = Path(destination)
        partial = destination.with_name(f".{destination.name}.part")
        size = 0
        with self._open(f"/instances/{_id(instance_id)}/file") as response, open(partial, "wb") as out:
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    size += len(block)
            except (OSError, socket.timeout) as error:
                raise OrthancUnavailable(f"download from {self.url} broke off: {error}") from None
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, destination)
        return size

    # plumbing --------------------------------------------------------------------------------------------------
    def _json(self, path: str, timeout: Optional[float] = None):
        body = self._request(path, timeout=timeout)
        try:
            return json.loads(body)
        except ValueError:
            raise OrthancError(f"{self.url}{path.split('?')[0]}: the answer is not JSON") from None

    def _request(self, path: str, timeout: Optional[float] = None) -> bytes:
        with self._open(path, timeout) as response:
            try:
                return response.read()
            except (OSError, socket.timeout) as error:
                raise OrthancUnavailable(f"{self.url}: the answer broke off: {error}") from None

    def _open(self, path: str, timeout: Optional[float] = None):
        request = urllib.request.Request(self.url + path, headers=self._headers())
        where = f"{self.url}{path.split('?')[0]}"
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 404:
                raise OrthancNotFound(f"{where}: not found") from None
            if error.code in (401, 403):
                raise OrthancUnavailable(
                    f"{where}: HTTP {error.code}, Orthanc refused the credentials (DERMSEG_ORTHANC_USER / _PASSWORD)"
                ) from None
            if error.code >= 500 or error.code in (408, 429):
                raise OrthancUnavailable(f"{where}: HTTP {error.code} {error.reason}") from None
            raise OrthancError(f"{where}: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError, socket.timeout) as error:
            reason = getattr(error, "reason", error)
            raise OrthancUnavailable(f"cannot reach Orthanc at {self.url}: {reason}") from None

    def _headers(self) -> dict:
        if not self.credentials:
            return {}
        token = base64.b64encode(":".join(self.credentials).encode("utf-8")).decode("ascii")
        return {"Authorization": f"Basic {token}"}


def _id(resource_id: str) -> str:
    """An Orthanc id as it goes into a URL path: its own characters only (hex digits and dashes)."""
    if not resource_id or not all(c in "0123456789abcdef-" for c in resource_id):
        raise OrthancError(f"not an Orthanc resource id: {resource_id[:80]!r}")
    return resource_id
