# Copyright (c) the dermseg contributors. Apache-2.0.
"""``python -m monai_app.serve --orthanc URL --work DIR [--model PATH] [--http-port PORT]``

Runs until SIGTERM or SIGINT (then stops cleanly: a send under way finishes, an app run is stopped and its round
runs again at the next start).  Exit status: 0 after a clean stop, 2 when it cannot start (a bad setting, an
unreadable password file, another service on the same work folder).  ``--status`` prints the rounds recorded in
the work folder as JSON lines and exits.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from ..startup import leave_out_unused_packages

if __name__ == "__main__":  # the program, not an import of it
    leave_out_unused_packages()

from ..settings import (  # noqa: E402
    DEFAULT_MODEL_PATH, AppSettings, apply_app_config_defaults, orthanc_credentials_from_env,
)
from .ops import Metrics, OpsServer  # noqa: E402
from .orthanc import OrthancClient  # noqa: E402
from .progress import Progress  # noqa: E402
from .service import EdgeService, ServiceOptions  # noqa: E402

_log = logging.getLogger("monai_app.serve")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    defaults = ServiceOptions()
    parser = argparse.ArgumentParser(
        prog="python -m monai_app.serve",
        description="Segment every dermoscopy study Orthanc receives and send the results to DERMSEG_SEND_TO.",
        epilog="Orthanc credentials: DERMSEG_ORTHANC_USER with DERMSEG_ORTHANC_PASSWORD_FILE (never on the command "
        "line). The app's settings (DERMSEG_*) apply as for python -m monai_app.",
    )
    parser.add_argument("--orthanc", help="Orthanc's REST API, e.g. http://127.0.0.1:8042")
    parser.add_argument("--work", type=Path, required=True, help="the service's folder: progress database, studies")
    parser.add_argument("--model", "-m", type=Path, help="the model (default: $HOLOSCAN_MODEL_PATH, else the app's)")
    parser.add_argument("--http-port", type=int, default=0, help="port of /healthz and /metrics (default 0: off)")
    parser.add_argument("--http-host", default="127.0.0.1", help="address of /healthz and /metrics (default 127.0.0.1)")
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval, help="seconds between looks "
                        f"at Orthanc's changes when idle (default {defaults.poll_interval:g})")
    parser.add_argument("--max-attempts", type=int, default=defaults.max_attempts,
                        help=f"app runs per study before it is recorded failed (default {defaults.max_attempts})")
    parser.add_argument("--retry-delay", type=float, default=defaults.retry_delay,
                        help=f"seconds before a failed app run is retried, doubling (default {defaults.retry_delay:g})")
    parser.add_argument("--backoff-max", type=float, default=defaults.backoff_max,
                        help=f"longest wait for an unreachable Orthanc or PACS (default {defaults.backoff_max:g} s)")
    parser.add_argument("--keep-days", type=float, default=defaults.keep_days,
                        help="days a finished study's results and app log stay in WORK/studies (default "
                        f"{defaults.keep_days:g}; inf keeps them)")
    parser.add_argument("--status", action="store_true", help="print the recorded rounds as JSON lines and exit")
    parser.add_argument("-l", "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    if not args.status and not args.orthanc:
        parser.error("--orthanc URL is required")
    if (args.max_attempts < 1 or args.poll_interval <= 0 or args.retry_delay < 0 or args.backoff_max <= 0
            or not args.keep_days >= 0):
        parser.error("--max-attempts must be >= 1, --poll-interval and --backoff-max > 0, --retry-delay and "
                     "--keep-days >= 0")
    return args


def print_status(work: Path) -> int:
    if not (work / "serve.sqlite").is_file():
        print(f"no progress database in {work}", file=sys.stderr)
        return 2
    progress = Progress(work / "serve.sqlite")
    try:
        print(json.dumps({"feed_position": progress.position}))
        for row in progress.rounds():
            print(json.dumps(row))
    finally:
        progress.close()
    return 0


class ModelCheck:
    """The model the app will use, checked for ``/healthz``: ``--model`` or ``$HOLOSCAN_MODEL_PATH``, else the
    app's default (the edge store's active model where one is installed, else the bundle's export).  The edge
    store is looked up at most every ``refresh_s`` seconds."""

    def __init__(self, model: Optional[Path], settings: AppSettings, refresh_s: float = 30.0):
        self.model, self.settings, self.refresh_s = model, settings, refresh_s
        self._default, self._looked_up = DEFAULT_MODEL_PATH, float("-inf")

    def path(self) -> Path:
        if self.model is not None:
            return self.model
        if self.settings.edge_store is not None and time.monotonic() - self._looked_up > self.refresh_s:
            self._looked_up = time.monotonic()
            if (self.settings.edge_store / "edge.sqlite").exists():
                from ..edge import EdgeStore

                with EdgeStore(self.settings.edge_store, create=False) as store:
                    self._default = store.active_model_path() or DEFAULT_MODEL_PATH
        return self._default

    def __call__(self) -> Optional[str]:
        from operators.model import resolve_model_file

        try:
            resolve_model_file(self.path(), precision=self.settings.model_precision)
        except (OSError, ValueError) as error:
            return str(error)
        return None


def lock_work_folder(work: Path):
    """An exclusive ``flock`` on ``WORK/.lock`` for the service's lifetime: two services on one work folder would
    run and send the same studies."""
    work.mkdir(parents=True, exist_ok=True)
    handle = open(work / ".lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(f"another service is running on {work}") from None
    return handle


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines name the objects it sends
    if args.status:
        return print_status(args.work)
    # the settings' checks import the model code, and with it Holoscan, which warns about the stack size; the
    # service runs no Holoscan graph (the app's child process gets a 32 MiB stack)
    warnings.filterwarnings("ignore", message=r"Current stack size .* is below the recommended minimum")
    try:
        apply_app_config_defaults()
        settings = AppSettings.from_env()
        orthanc = OrthancClient(args.orthanc, credentials=orthanc_credentials_from_env())
        model = args.model or (Path(os.environ["HOLOSCAN_MODEL_PATH"]) if os.environ.get("HOLOSCAN_MODEL_PATH") else None)
        lock = lock_work_folder(args.work)
    except (ValueError, OSError) as error:
        print(f"monai_app.serve: cannot start: {error}", file=sys.stderr)
        return 2
    metrics = Metrics()
    options = ServiceOptions(poll_interval=args.poll_interval, max_attempts=args.max_attempts,
                             retry_delay=args.retry_delay, backoff_max=args.backoff_max, keep_days=args.keep_days)
    service = EdgeService(orthanc, args.work, settings, model, dict(os.environ), metrics, options)
    check = ModelCheck(model, settings)
    problem = check()
    if problem:
        _log.warning("model: %s (/healthz reports 503 until it is there)", problem)

    def stop(signum, _frame):
        _log.info("%s: stopping", signal.Signals(signum).name)
        service.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ops = None
    if args.http_port:
        try:
            ops = OpsServer(args.http_host, args.http_port, metrics, lambda: service.health(check)).start()
        except OSError as error:
            print(f"monai_app.serve: cannot serve on {args.http_host}:{args.http_port}: {error}", file=sys.stderr)
            return 2
    try:
        service.run()
    finally:
        if ops is not None:
            ops.stop()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
