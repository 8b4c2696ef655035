# Copyright (c) the dermseg contributors. Apache-2.0.
"""How the sender sends: the calling AE title, timeouts, retries, a DICOMweb token and DICOM TLS files.

Plain values, checked when made: the sender never reads the environment.  ``monai_app.settings`` builds them from
the ``DERMSEG_*`` variables (:func:`monai_app.settings.send_options_from_env`); a library caller passes its own.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional

from .transport import TargetError

__all__ = ["AE_TITLE", "DEFAULT_CALLING_AET", "SendOptions"]

DEFAULT_CALLING_AET = "DERMSEG"

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or control characters, and
# leading/trailing spaces are not significant.
AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


@dataclass(frozen=True)
class SendOptions:
    calling_aet: str = DEFAULT_CALLING_AET
    timeout: float = 30.0  # seconds, for connecting and for each response
    retries: int = 2  # extra attempts after a transient failure (network down, PACS busy)
    retry_delay: float = 2.0  # seconds before the first retry; doubles after each
    dicomweb_token: Optional[str] = field(default=None, repr=False)  # sent as "Authorization: Bearer ..."
    # DICOM TLS (dicom-tls:// targets): the CA bundle that signed the PACS's certificate (None: the system's), and
    # this edge's own certificate and key where the PACS asks for one (mutual TLS)
    tls_ca_file: Optional[str] = None
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = field(default=None, repr=False)

    def __post_init__(self):
        if not AE_TITLE.match(self.calling_aet):
            raise TargetError(
                f"calling AE title {self.calling_aet!r} (DERMSEG_CALLING_AET) must be 1 to 16 printable ASCII "
                "characters, no '\\'"
            )
        if self.timeout <= 0 or self.retries < 0 or self.retry_delay < 0:
            raise TargetError(
                f"send options out of range: timeout {self.timeout} must be > 0, retries {self.retries} and "
                f"retry delay {self.retry_delay} must be >= 0"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise TargetError("a TLS client certificate and its key go together: give both files or neither")

    def updated(self, **changes) -> "SendOptions":
        """These options with ``changes`` applied, those that are None left out (an argument not given)."""
        return dataclasses.replace(self, **{key: value for key, value in changes.items() if value is not None})
