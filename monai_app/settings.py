# Copyright (c) the dermseg contributors. Apache-2.0.
"""The app's settings beyond the SDK's -i/-o/-m flags: environment variables, as a MAP is configured.

This module is the one reader of the ``DERMSEG_*`` variables.  Each variable's name, default, check and error
message is written once, here; the operators and the PACS sender take plain values (a threshold, a
:class:`~monai_app.pacs.SendOptions`), so they run and are tested without an environment, and a setting cannot be
read two ways in two places.  The app builds one :class:`AppSettings` before it starts; the send command
(``python -m monai_app.send``) reads only the sending part (:func:`send_to_from_env`, :func:`send_options_from_env`);
the edge service (``python -m monai_app.serve``) reads the app's settings and its Orthanc credentials
(:func:`orthanc_credentials_from_env`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

import yaml

from operators.confidence import DEFAULT_MEASURE, DEFAULT_THRESHOLD, MEASURES

from .pacs import DicomWebTarget, SendOptions, TargetError, parse_target, parse_targets

__all__ = [
    "AppSettings",
    "DEFAULT_MODEL_PATH",
    "APP_CONFIG_SECTION",
    "apply_app_config_defaults",
    "orthanc_credentials_from_env",
    "edge_store_from_env",
    "model_precision_from_env",
    "send_options_from_env",
    "send_to_from_env",
    "review_send_to_from_env",
    "review_pull_from_env",
    "review_pull_every_from_env",
    "threshold_from_env",
]

ENV_CONFIDENCE_THRESHOLD = "DERMSEG_CONFIDENCE_THRESHOLD"
ENV_CONFIDENCE_MEASURE = "DERMSEG_CONFIDENCE_MEASURE"
ENV_EDGE_STORE = "DERMSEG_EDGE_STORE"
ENV_BATCH_SIZE = "DERMSEG_BATCH_SIZE"
ENV_PROBABILITY_SEG = "DERMSEG_PROBABILITY_SEG"
ENV_FLIP_TTA = "DERMSEG_FLIP_TTA"
ENV_MODEL_PRECISION = "DERMSEG_MODEL_PRECISION"
ENV_SEND_TO = "DERMSEG_SEND_TO"
ENV_CALLING_AET = "DERMSEG_CALLING_AET"
ENV_SEND_TIMEOUT = "DERMSEG_SEND_TIMEOUT"
ENV_SEND_RETRIES = "DERMSEG_SEND_RETRIES"
ENV_SEND_RETRY_DELAY = "DERMSEG_SEND_RETRY_DELAY"
ENV_DICOMWEB_TOKEN = "DERMSEG_DICOMWEB_TOKEN"
# The review loop through a PACS: where review cases go (as DERMSEG_SEND_TO), and the DICOMweb server whose
# reviewers' SEGs the edge store pulls back (credentials in this variable's URL, never on a command line).
ENV_REVIEW_SEND_TO = "DERMSEG_REVIEW_SEND_TO"
ENV_REVIEW_PULL_FROM = "DERMSEG_REVIEW_PULL_FROM"
# Seconds between the edge service's pulls: each pull asks the server once per study with waiting cases, so a
# site with a busy PACS pulls less often, and one whose reviewers wait for the next model sooner pulls more.
ENV_REVIEW_PULL_EVERY = "DERMSEG_REVIEW_PULL_EVERY"
DEFAULT_REVIEW_PULL_EVERY = 600.0
ENV_TLS_CA_FILE = "DERMSEG_TLS_CA_FILE"
ENV_TLS_CERT_FILE = "DERMSEG_TLS_CERT_FILE"
ENV_TLS_KEY_FILE = "DERMSEG_TLS_KEY_FILE"
# The edge service's account on its Orthanc's REST API (never on the command line, which every user can read).
ENV_ORTHANC_USER = "DERMSEG_ORTHANC_USER"
ENV_ORTHANC_PASSWORD = "DERMSEG_ORTHANC_PASSWORD"
ENV_ORTHANC_PASSWORD_FILE = "DERMSEG_ORTHANC_PASSWORD_FILE"
ORTHANC_CREDENTIAL_VARIABLES = (ENV_ORTHANC_USER, ENV_ORTHANC_PASSWORD, ENV_ORTHANC_PASSWORD_FILE)

# The section of app.yaml holding the app's own settings, by their environment variable names.
APP_CONFIG_SECTION = "dermseg"

# Where the training bundle exports its model, model.onnx and model.ts (the app picks one by device, see
# operators.model.resolve_model_file); a MAP sets HOLOSCAN_MODEL_PATH instead.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "training_bundle" / "models"


def apply_app_config_defaults(environ=None) -> dict:
    """Use the ``dermseg:`` section of the app's configuration file as defaults for the environment.

    Inside a MAP the packager copies app.yaml into the package and points ``HOLOSCAN_CONFIG_PATH`` at it, so a
    site can set ``DERMSEG_SEND_TO`` and the other ``DERMSEG_*`` settings there; a variable set in the
    container's environment still wins.  Called once, before anything reads a setting, so every reader (these
    settings, the PACS sender's options) sees the same values.  Returns the defaults it applied.
    """
    environ = os.environ if environ is None else environ
    path = environ.get("HOLOSCAN_CONFIG_PATH")
    if not path or not Path(path).is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"HOLOSCAN_CONFIG_PATH={path}: cannot read the app configuration: {exc}") from None
    section = config.get(APP_CONFIG_SECTION) if isinstance(config, dict) else None
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(str(k).startswith("DERMSEG_") for k in section):
        raise ValueError(f"{path}: '{APP_CONFIG_SECTION}' must map DERMSEG_* variable names to values")
    applied = {str(k): "" if v is None else str(v) for k, v in section.items() if str(k) not in environ}
    environ.update(applied)
    return applied


@dataclass(frozen=True)
class AppSettings:
    confidence_threshold: float
    edge_store: Optional[Path]  # DERMSEG_EDGE_STORE: the edge loop's sample store and review queue
    send_to: Optional[str]  # DERMSEG_SEND_TO: where results go, a PACS AE or a STOW-RS URL
    batch_size: int
    write_probability_seg: bool
    flip_tta: bool  # DERMSEG_FLIP_TTA: mask from the image and its mirror image, confidence x their agreement (2x)
    model_precision: str = "int8"  # DERMSEG_MODEL_PRECISION: int8 (model_int8.onnx where there is one) or fp32
    # DERMSEG_CALLING_AET, DERMSEG_SEND_*, DERMSEG_DICOMWEB_TOKEN: how to send (and pull); read (and checked)
    # only when DERMSEG_SEND_TO, DERMSEG_REVIEW_SEND_TO or DERMSEG_REVIEW_PULL_FROM names a server, else None
    send: Optional[SendOptions] = None
    confidence_measure: str = DEFAULT_MEASURE  # DERMSEG_CONFIDENCE_MEASURE: one of operators.confidence.MEASURES
    review_send_to: Optional[str] = None  # DERMSEG_REVIEW_SEND_TO: where review cases go (source, SEG, overlay)
    review_pull_from: Optional[DicomWebTarget] = None  # DERMSEG_REVIEW_PULL_FROM: the service pulls corrections
    review_pull_every: float = DEFAULT_REVIEW_PULL_EVERY  # DERMSEG_REVIEW_PULL_EVERY: seconds between those pulls

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "AppSettings":
        """Read and check the settings; a bad value is a ValueError naming the variable (a bad send target or
        send option is a :class:`~monai_app.pacs.TargetError`, also a ValueError)."""
        environ = os.environ if environ is None else environ
        # one case per model call by default: on the CPU batching is slower per image (benchmarks/app_throughput.py)
        batch_raw = environ.get(ENV_BATCH_SIZE, "1").strip() or "1"
        if not batch_raw.isdigit() or not 1 <= int(batch_raw) <= 256:
            raise ValueError(f"{ENV_BATCH_SIZE}={batch_raw!r} must be a whole number from 1 to 256")
        probability = _flag(environ, ENV_PROBABILITY_SEG, True)
        flip_tta = _flag(environ, ENV_FLIP_TTA, False)
        precision = model_precision_from_env(environ)
        threshold = threshold_from_env(environ)
        measure = environ.get(ENV_CONFIDENCE_MEASURE, "").strip() or DEFAULT_MEASURE
        if measure not in MEASURES:
            raise ValueError(f"{ENV_CONFIDENCE_MEASURE}={measure!r} must be one of {', '.join(MEASURES)}")
        send_to = send_to_from_env(environ)
        review_send_to = review_send_to_from_env(environ)
        review_pull_from = review_pull_from_env(environ)
        review_pull_every = review_pull_every_from_env(environ)
        for targets in (send_to, review_send_to):
            if targets:
                parse_targets(targets)  # a typo in DERMSEG_SEND_TO stops the run before any inference
        return cls(
            confidence_threshold=threshold,
            edge_store=edge_store_from_env(environ),
            send_to=send_to,
            batch_size=int(batch_raw),
            write_probability_seg=probability,
            flip_tta=flip_tta,
            model_precision=precision,
            send=send_options_from_env(environ) if send_to or review_send_to or review_pull_from else None,
            confidence_measure=measure,
            review_send_to=review_send_to,
            review_pull_from=review_pull_from,
            review_pull_every=review_pull_every,
        )

    def for_results(self) -> dict:
        """What results.json records about the run (no paths: they may name a site's layout)."""
        return {
            ENV_CONFIDENCE_THRESHOLD: self.confidence_threshold,
            ENV_CONFIDENCE_MEASURE: self.confidence_measure,
            "edge_store": self.edge_store is not None,
            "send_to": self.send_to is not None,
            "review_send_to": self.review_send_to is not None,
            "flip_tta": self.flip_tta,
            "model_precision": self.model_precision,
        }


def model_precision_from_env(environ: Optional[Mapping[str, str]] = None) -> str:
    """``DERMSEG_MODEL_PRECISION`` (``int8`` or ``fp32``, default ``int8``): which export of a model folder runs."""
    from operators.model import PRECISIONS  # loads torch: not at import, the send command reads settings too

    environ = os.environ if environ is None else environ
    precision = environ.get(ENV_MODEL_PRECISION, "").strip().lower() or "int8"
    if precision not in PRECISIONS:
        raise ValueError(f"{ENV_MODEL_PRECISION}={precision!r} must be one of {', '.join(PRECISIONS)}")
    return precision


def threshold_from_env(environ: Optional[Mapping[str, str]] = None) -> float:
    """The routing threshold from ``DERMSEG_CONFIDENCE_THRESHOLD``; a value outside [0, 1] is a ValueError."""
    environ = os.environ if environ is None else environ
    raw, value = _number(environ, ENV_CONFIDENCE_THRESHOLD, DEFAULT_THRESHOLD, float)
    if value is None:
        raise ValueError(f"{ENV_CONFIDENCE_THRESHOLD}={raw!r} is not a number")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{ENV_CONFIDENCE_THRESHOLD}={raw!r} must be between 0 and 1")
    return value


def edge_store_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """``DERMSEG_EDGE_STORE``, the edge store's folder, or None where it is unset or empty."""
    environ = os.environ if environ is None else environ
    return Path(environ[ENV_EDGE_STORE]) if environ.get(ENV_EDGE_STORE) else None


def send_to_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """``DERMSEG_SEND_TO``, the comma-separated send targets, or None where it is unset or empty."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_SEND_TO) or None


def review_send_to_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """``DERMSEG_REVIEW_SEND_TO``: where review cases are sent (same forms as ``DERMSEG_SEND_TO``), or None."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_REVIEW_SEND_TO, "").strip() or None


def review_pull_from_env(environ: Optional[Mapping[str, str]] = None):
    """``DERMSEG_REVIEW_PULL_FROM``, the DICOMweb server whose reviewers' SEGs the edge store pulls, as a parsed
    :class:`~monai_app.pacs.DicomWebTarget` (basic-auth credentials may be in the URL: an environment variable
    is not shown to other users, a command line is), or None where unset.  Not a DICOMweb URL: TargetError."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_REVIEW_PULL_FROM, "").strip()
    if not raw:
        return None
    target = parse_target(raw)
    if not isinstance(target, DicomWebTarget):
        raise TargetError(f"{ENV_REVIEW_PULL_FROM}: corrections are pulled by DICOMweb: give http(s)://host:port/path")
    return target


def review_pull_every_from_env(environ: Optional[Mapping[str, str]] = None) -> float:
    """``DERMSEG_REVIEW_PULL_EVERY``: seconds between the edge service's pulls of corrections (default 600); a
    value that is not a number above 0 is a ValueError naming the variable."""
    environ = os.environ if environ is None else environ
    raw, value = _number(environ, ENV_REVIEW_PULL_EVERY, DEFAULT_REVIEW_PULL_EVERY, float)
    # NaN would make the service pull at every turn of its loop, infinity never: both are refused, not obeyed
    if value is None or not 0.0 < value < float("inf"):
        raise ValueError(f"{ENV_REVIEW_PULL_EVERY}={raw!r} must be a number of seconds above 0")
    return value


def send_options_from_env(environ: Optional[Mapping[str, str]] = None, **overrides) -> SendOptions:
    """Send options from the ``DERMSEG_*`` variables; keyword arguments that are not None take precedence."""
    environ = os.environ if environ is None else environ
    defaults = SendOptions()
    values = {
        "calling_aet": environ.get(ENV_CALLING_AET, "").strip() or defaults.calling_aet,
        "timeout": _send_number(environ, ENV_SEND_TIMEOUT, defaults.timeout, float, minimum=0.1),
        "retries": _send_number(environ, ENV_SEND_RETRIES, defaults.retries, int, minimum=0),
        "retry_delay": _send_number(environ, ENV_SEND_RETRY_DELAY, defaults.retry_delay, float, minimum=0.0),
        "dicomweb_token": environ.get(ENV_DICOMWEB_TOKEN) or None,
        "tls_ca_file": environ.get(ENV_TLS_CA_FILE) or None,
        "tls_cert_file": environ.get(ENV_TLS_CERT_FILE) or None,
        "tls_key_file": environ.get(ENV_TLS_KEY_FILE) or None,
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    return SendOptions(**values)


def orthanc_credentials_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Tuple[str, str]]:
    """``(user, password)`` for Orthanc's REST API, or None where ``DERMSEG_ORTHANC_USER`` is unset.

    The password comes from ``DERMSEG_ORTHANC_PASSWORD_FILE`` (a file holding it, as systemd's ``LoadCredential``
    and Docker secrets provide; a final line break is dropped) or ``DERMSEG_ORTHANC_PASSWORD``, not both.  Any
    half-given account is a ValueError that names the variables, never the password.
    """
    environ = os.environ if environ is None else environ
    user = environ.get(ENV_ORTHANC_USER, "").strip()
    password = environ.get(ENV_ORTHANC_PASSWORD) or None
    password_file = environ.get(ENV_ORTHANC_PASSWORD_FILE, "").strip()
    if password is not None and password_file:
        raise ValueError(f"set {ENV_ORTHANC_PASSWORD_FILE} or {ENV_ORTHANC_PASSWORD}, not both")
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{ENV_ORTHANC_PASSWORD_FILE}={password_file}: cannot read it ({type(exc).__name__})") from None
        if not password:
            raise ValueError(f"{ENV_ORTHANC_PASSWORD_FILE}={password_file} is empty")
    if not user:
        if password is not None:
            raise ValueError(f"a password for Orthanc is set but {ENV_ORTHANC_USER} is not")
        return None
    if password is None:
        raise ValueError(f"{ENV_ORTHANC_USER} is set: give the password in {ENV_ORTHANC_PASSWORD_FILE}")
    if ":" in user:
        raise ValueError(f"{ENV_ORTHANC_USER} must not contain ':' (HTTP basic authentication)")
    return user, password


def _flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{name}={raw!r} must be 1 or 0")
    return raw in ("1", "true", "yes")


def _number(environ: Mapping[str, str], name: str, default, kind) -> Tuple[str, object]:
    """The variable as given (stripped) and as a ``kind`` number: ``default`` where it is unset or blank, None
    where it is not a number (the caller says what it must be)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return raw, default
    try:
        return raw, kind(raw)
    except ValueError:
        return raw, None


def _send_number(environ: Mapping[str, str], name: str, default, kind, minimum):
    """A send option's number; a bad one is a TargetError, as the sender's own checks raise."""
    raw, value = _number(environ, name, default, kind)
    if value is None or value < minimum:
        raise TargetError(f"{name}={raw!r} must be a {'whole ' if kind is int else ''}number >= {minimum}")
    return value
