# Copyright (c) the dermseg contributors. Apache-2.0.
"""Operations: ``GET /healthz`` and ``GET /metrics`` (Prometheus text format) on ``--http-port``.

``/healthz`` answers 200 when Orthanc answers and the model is there (a TorchScript or ONNX model that
:func:`operators.model.resolve_model_file` accepts, checked by its archive layout without loading it), else 503;
the body says which check failed (URLs and paths, no credentials, no patient data).  A load balancer, systemd's
watchdog script or Docker's ``healthcheck`` can poll it.

The metrics live in their own registry (the service is the only writer) and count from the service's start, as
Prometheus counters do; the durable totals are in the progress database.  The HTTP server runs in a daemon thread
and only reads: the gauges are set by the service's loop, never by a request (the SQLite connection stays in one
thread).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "OpsServer"]

_log = logging.getLogger(__package__)
STAGES = ("download", "app", "send")


class Metrics:
    """Every ``dermseg_*`` series the service exports."""

    def __init__(self):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.studies_processed = Counter(
            "dermseg_studies_processed", "Study rounds segmented and sent (done)", registry=registry
        )
        self.studies_skipped = Counter(
            "dermseg_studies_skipped", "Study rounds with nothing to segment (no app run)", registry=registry
        )
        self.studies_failed = Counter(
            "dermseg_studies_failed", "Study rounds given up after their last attempt", registry=registry
        )
        self.attempts_failed = Counter(
            "dermseg_app_attempts_failed", "App runs that failed (retried while attempts remain)", registry=registry
        )
        self.cases_processed = Counter("dermseg_cases_processed", "Images segmented (status ok)", registry=registry)
        self.cases_error = Counter("dermseg_cases_error", "Images the app reported as errors", registry=registry)
        self.cases_review = Counter("dermseg_cases_review", "Segmented images routed to review", registry=registry)
        self.sends_failed = Counter(
            "dermseg_sends_failed", "Object transfers to a PACS that failed (retried with backoff)", registry=registry
        )
        self.queue_depth = Gauge("dermseg_queue_depth", "Study rounds waiting to run or to be sent", registry=registry)
        self.orthanc_up = Gauge("dermseg_orthanc_up", "1 when the last call to Orthanc succeeded", registry=registry)
        self.feed_position = Gauge("dermseg_feed_position", "Last Orthanc change taken in", registry=registry)
        self.stage_seconds = Histogram(
            "dermseg_stage_seconds", "Seconds per study round and stage", ["stage"], registry=registry,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640),
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage=stage)  # every stage shows from the start, at zero

    def add_cases(self, counts: Dict[str, int]) -> None:
        self.cases_processed.inc(counts.get("cases_ok", 0))
        self.cases_error.inc(counts.get("cases_error", 0))
        self.cases_review.inc(counts.get("review", 0))


class OpsServer:
    """``ThreadingHTTPServer`` on (host, port) in a daemon thread; ``health()`` returns (healthy, details)."""

    def __init__(self, host: str, port: int, metrics: Metrics, health: Callable[[], Tuple[bool, dict]]):
        handler = type("OpsHandler", (_Handler,), {"metrics": metrics, "health": staticmethod(health)})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> "OpsServer":
        self.thread = threading.Thread(target=self.server.serve_forever, name="dermseg-ops", daemon=True)
        self.thread.start()
        _log.info("health and metrics on http://%s:%d/healthz and /metrics", *self.server.server_address[:2])
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    health: Callable[[], Tuple[bool, dict]]
    server_version = "dermseg-serve"

    def do_GET(self):  # noqa: N802 (the http.server protocol)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            healthy, details = self.health()
            body = json.dumps({"healthy": healthy, **details}).encode("utf-8")
            self._answer(200 if healthy else 503, body, "application/json")
        else:
            self._answer(404, b"not found: /healthz or /metrics\n", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        _log.debug("ops: " + format, *args)
