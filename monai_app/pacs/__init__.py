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
after each, default 2) tune the sending.  Those variables are read by ``monai_app.settings`` (the app's one reader
of the environment), which hands this package a :class:`SendOptions`; nothing here reads the environment.

A failed send loses nothing: the files stay in OUT and ``results.json`` gets a top-level ``"transfers"`` list with
one record per (object, target): what was sent, what failed and why.  Sending again (``python -m monai_app.send
OUT``) sends only what that list does not show as sent to that target.  The app's ``"cases"`` are never changed.

The modules, one concern each:

    transport   the contract a transport module fulfils (parse, send, Outcome), and TargetError
    targets     parsing targets; TRANSPORTS, the registry of transports by URL scheme
    dimse       C-STORE with pynetdicom (dicom://)
    dicomweb    STOW-RS with urllib (http://, https://)
    options     SendOptions: calling AE title, timeout, retries
    outputs     which files of a run are DICOM objects, in sending order
    transfers   the transfer records in results.json, and the lock on OUT
    send        send_outputs and its SendSummary: retries, recording, per target
"""

from .dicomweb import DicomWebTarget
from .dimse import DimseTarget
from .options import DEFAULT_CALLING_AET, SendOptions
from .outputs import DicomObject, OutputSelection, find_dicom_outputs, is_dicom_file, read_results, review_selection
from .send import SendSummary, send_outputs
from .targets import TRANSPORTS, parse_target, parse_targets
from .transport import Outcome, Target, TargetError

__all__ = [
    "DEFAULT_CALLING_AET",
    "DicomObject",
    "DicomWebTarget",
    "DimseTarget",
    "Outcome",
    "OutputSelection",
    "SendOptions",
    "SendSummary",
    "Target",
    "TargetError",
    "TRANSPORTS",
    "find_dicom_outputs",
    "is_dicom_file",
    "parse_target",
    "parse_targets",
    "read_results",
    "review_selection",
    "send_outputs",
]
