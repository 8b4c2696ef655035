# Copyright (c) the dermseg contributors. Apache-2.0.
"""A real PACS for the tests: Debian's Orthanc, in a private network namespace that has only a loopback device.

Orthanc has no bind-address option and listens on all interfaces.  So that a test never opens a DICOM or HTTP
port to the machine's networks, every Orthanc here runs inside a named network namespace
(``ip netns add dermseg-test-<pid>-<n>``) whose only device is ``lo``.  Nothing outside the namespace can reach it,
and nothing inside it can reach anything but itself.  The client side goes in with it:

* commands (the sender CLI, the app) run as ``ip netns exec NAME ...``: :meth:`NetworkNamespace.command`;
* in-process checks (QIDO-RS, C-FIND, REST uploads) run inside ``with namespace.entered():``, which moves the
  calling thread into the namespace with ``setns(2)`` and back out at the end.  Sockets made meanwhile, and threads
  started meanwhile (pynetdicom starts some), live in the namespace.

Each Orthanc gets its own configuration, storage folder and ports, and is stopped by its process id; the namespace
is deleted at the end.  Needs root (``ip netns``), as in CI, and ``tests/system_deps.sh`` (packages ``orthanc``,
``orthanc-dicomweb``, ``iproute2``).
"""

from __future__ import annotations

import base64
import ctypes
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["NetworkNamespace", "Orthanc", "HarnessError", "ORTHANC_BINARY", "find_dicomweb_plugin"]

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",  # Debian's orthanc-dicomweb
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
LOOPBACK = "127.0.0.1"
_CLONE_NEWNET = 0x40000000
_counter = itertools.count()


class HarnessError(RuntimeError):
    """The test PACS could not be set up; the message says what is missing."""


def find_dicomweb_plugin() -> Optional[str]:
    for candidate in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    found = sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))  # versioned name only
    return str(found[0]) if found else None


# --------------------------------------------------------------------------------------------- network namespace
class NetworkNamespace:
    """A named network namespace with only ``lo`` (up).  Use :meth:`create`, and :meth:`delete` when done."""

    def __init__(self, name: str):
        self.name = name
        self.path = Path("/run/netns") / name

    @classmethod
    def create(cls, prefix: str = "dermseg-test") -> "NetworkNamespace":
        if os.geteuid() != 0:
            raise HarnessError("the Orthanc tests need root, to create a private network namespace (ip netns add)")
        if shutil.which("ip") is None:
            raise HarnessError("the Orthanc tests need `ip` (Debian package iproute2): run tests/system_deps.sh")
        _delete_stale_namespaces(prefix)
        namespace = cls(f"{prefix}-{os.getpid()}-{next(_counter)}")
        _run(["ip", "netns", "add", namespace.name])
        try:
            _run(["ip", "-n", namespace.name, "link", "set", "lo", "up"])
        except BaseException:
            namespace.delete()
            raise
        return namespace

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)

    def command(self, argv: Sequence[str]) -> List[str]:
        """``argv`` run inside the namespace (``ip netns exec`` then execs it: the process id stays the same)."""
        return ["ip", "netns", "exec", self.name, *map(str, argv)]

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body with the calling thread inside the namespace (``setns(2)``); always come back out."""
        libc = ctypes.CDLL(None, use_errno=True)
        with open("/proc/thread-self/ns/net", "rb") as home, open(self.path, "rb") as inside:
            if libc.setns(inside.fileno(), _CLONE_NEWNET) != 0:
                raise HarnessError(f"setns into {self.name} failed: {os.strerror(ctypes.get_errno())}")
            try:
                yield
            finally:
                if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:  # pragma: no cover
                    # staying inside would quietly cut every later test off the machine's network: stop here
                    os.write(2, f"cannot leave network namespace {self.name}: {os.strerror(ctypes.get_errno())}\n".encode())
                    os._exit(70)

    def free_port(self) -> int:
        """A TCP port nothing in the namespace listens on (the kernel's pick, so no guessing)."""
        with self.entered(), socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            return probe.getsockname()[1]


def _delete_stale_namespaces(prefix: str) -> None:
    """Namespaces ``PREFIX-<pid>-<n>`` left by a test run that was killed (its pid is gone): harmless, as they
    have only loopback, but they would pile up."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name[len(prefix) + 1 :].split("-")
        if name.startswith(prefix + "-") and len(parts) == 2 and parts[0].isdigit():
            if not Path(f"/proc/{parts[0]}").exists():
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


# ------------------------------------------------------------------------------------------------------- Orthanc
class Orthanc:
    """One Orthanc in ``namespace`` with its own storage under ``workdir``; :meth:`start` and :meth:`stop` it.

    The ports are chosen up front, so a test can point a sender at an Orthanc that is not running yet (nothing
    listens: connection refused) and start it later on the same ports.
    """

    def __init__(self, namespace: NetworkNamespace, workdir: Path, aet: str = "ORTHANC", extra: Optional[Dict] = None,
                 user: Optional[Tuple[str, str]] = None):
        self.namespace = namespace
        self.workdir = Path(workdir)
        self.aet = aet
        self.extra = dict(extra or {})  # configuration entries on top of the defaults (DICOM TLS, Lua scripts)
        self.user = user  # (name, password): HTTP basic authentication on, and the harness's own calls use it
        self.dicom_port = namespace.free_port()
        self.http_port = namespace.free_port()
        while self.http_port == self.dicom_port:
            self.http_port = namespace.free_port()
        self.process: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / "orthanc.log"

    # where to send ---------------------------------------------------------------------------------------------
    @property
    def dicom_target(self) -> str:
        return f"dicom://{self.aet}@{LOOPBACK}:{self.dicom_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}/dicom-web"

    @property
    def rest_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    # life cycle ------------------------------------------------------------------------------------------------
    def configuration(self) -> Dict:
        plugin = find_dicomweb_plugin()
        if plugin is None:
            raise HarnessError("Orthanc's DICOMweb plugin is missing (Debian package orthanc-dicomweb)")
        storage = self.workdir / "storage"
        return {
            "Name": f"dermseg-test-{self.aet}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # loopback only, on top of the namespace
            "AuthenticationEnabled": self.user is not None,
            "RegisteredUsers": {self.user[0]: self.user[1]} if self.user else {},
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,  # a wrong called AE title is rejected, as a strict PACS does
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowEcho": True,
            # Dermoscopic Photography (2020) is newer than the DCMTK in Debian's Orthanc 1.10
            "UnknownSopClassAccepted": True,
            "DicomModalities": {},
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "DicomThreadsCount": 2,
            "DicomScpTimeout": 10,
            **self.extra,
        }

    def start(self, timeout: float = 30.0) -> "Orthanc":
        if not Path(ORTHANC_BINARY).is_file():
            raise HarnessError(f"{ORTHANC_BINARY} is missing (Debian package orthanc): run tests/system_deps.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.configuration(), indent=2))
        # setpriv --pdeathsig: should the test process be killed before its teardown, Orthanc goes with it
        # (`ip netns exec` and setpriv both exec, so the process id stays Orthanc's).
        guard = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.namespace.command([*guard, ORTHANC_BINARY, "--no-jobs", config_path]),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise HarnessError(f"Orthanc exited with {self.process.returncode} at start:\n{self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise HarnessError(f"Orthanc did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        try:
            self.rest("GET", "/system", timeout=2)
        except (urllib.error.URLError, OSError):
            return False
        with self.namespace.entered(), socket.socket() as probe:
            probe.settimeout(2)
            return probe.connect_ex((LOOPBACK, self.dicom_port)) == 0

    def stop(self) -> None:
        """Stop this Orthanc by its process id: SIGTERM, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # REST and DICOMweb, from inside the namespace ------------------------------------------------------------------
    def rest(self, method: str, path: str, data: Optional[bytes] = None, headers=None, timeout: float = 30) -> bytes:
        headers = dict(headers or {})
        if self.user and "Authorization" not in headers:
            token = base64.b64encode(f"{self.user[0]}:{self.user[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        request = urllib.request.Request(self.rest_url + path, data=data, method=method, headers=headers)
        with self.namespace.entered():
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()

    def upload(self, dicom_file: Path) -> str:
        """Store a DICOM file through the REST API; returns Orthanc's instance id."""
        answer = json.loads(self.rest("POST", "/instances", Path(dicom_file).read_bytes()))
        return answer["ID"]

    def download(self, instance_id: str) -> bytes:
        return self.rest("GET", f"/instances/{instance_id}/file")

    def instance_id(self, sop_instance_uid: str) -> str:
        """Orthanc's id of the instance with this SOP Instance UID (REST /tools/lookup)."""
        matches = json.loads(self.rest("POST", "/tools/lookup", sop_instance_uid.encode("ascii")))
        (instance,) = [match["ID"] for match in matches if match["Type"] == "Instance"]
        return instance

    def instance_ids(self) -> List[str]:
        return json.loads(self.rest("GET", "/instances"))

    def sop_instance_uids(self) -> List[str]:
        uids = []
        for instance_id in self.instance_ids():
            tags = json.loads(self.rest("GET", f"/instances/{instance_id}/simplified-tags"))
            uids.append(tags["SOPInstanceUID"])
        return uids

    def qido(self, path: str, **query: str) -> List[Dict]:
        """A QIDO-RS search, e.g. ``qido("/studies/UID/instances", Modality="SEG")``; DICOM JSON objects."""
        url = f"/dicom-web{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        answer = self.rest("GET", url, headers={"Accept": "application/dicom+json"})
        return json.loads(answer) if answer.strip() else []

    def c_find_instances(self, study_instance_uid: str, calling_aet: str = "DERMSEG-TEST") -> List:
        """A C-FIND at IMAGE level in the study: one pydicom Dataset per instance (SOP class, UID, modality)."""
        from pydicom.dataset import Dataset
        from pynetdicom import AE
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_instance_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        query.Modality = ""
        ae = AE(ae_title=calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        found = []
        with self.namespace.entered():
            assoc = ae.associate(LOOPBACK, self.dicom_port, ae_title=self.aet)
            if not assoc.is_established:
                raise HarnessError(f"C-FIND: no association with Orthanc:\n{self.log_tail()}")
            try:
                for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                    if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                        found.append(identifier)
            finally:
                assoc.release()
        return found
