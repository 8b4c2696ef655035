# Copyright (c) the dermseg contributors. Apache-2.0.
"""Sending to a PACS that wants proof: real Orthancs with DICOM TLS, HTTP basic authentication, a bearer token.

- C-STORE over DICOM TLS (``dicom-tls://``) with client certificates required.  The certificates are made here
  with the ``openssl`` command: a CA, the PACS's certificate for 127.0.0.1 and this edge's client certificate.
  The results arrive over TLS with mutual authentication; a PACS whose certificate the edge's CA did not sign is
  refused and not retried; a plain ``dicom://`` association to the TLS port gets nowhere.
- STOW-RS to an Orthanc with its own HTTP basic authentication on (``https://user:password@...`` style URLs), and
  to one whose DICOMweb API takes a bearer token only (Orthanc's ``IncomingHttpRequestFilter`` Lua hook checks
  the ``Authorization`` header): the right credentials store, wrong ones are "not authorised" and not retried.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _orthanc import LOOPBACK, Orthanc  # noqa: E402
from test_pacs import QUICK, write_run  # noqa: E402

from monai_app.pacs import SendOptions, send_outputs  # noqa: E402


def _openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def _certificate(folder: Path, name: str, ca: Path, ca_key: Path, ip: str = "") -> tuple:
    key, request, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}")
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName=IP:{ip}\n" if ip else "extendedKeyUsage=clientAuth\n")
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-out", str(cert), "-extfile", str(extensions))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / f"{ca}.key"),
                 "-out", str(folder / f"{ca}.crt"), "-days", "2", "-subj", f"/CN=dermseg test {ca}")
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    server = _certificate(folder, "pacs", ca, ca_key, ip=LOOPBACK)
    client = _certificate(folder, "edge", ca, ca_key)
    return {"ca": ca, "other_ca": folder / "other-ca.crt", "server": server, "client": client}


@pytest.fixture(scope="module")
def tls_orthanc(namespace, pki, tmp_path_factory):
    cert, key = pki["server"]
    server = Orthanc(namespace, tmp_path_factory.mktemp("orthanc-tls"), aet="TLSPACS", extra={
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(cert),
        "DicomTlsPrivateKey": str(key),
        "DicomTlsTrustedCertificates": str(pki["ca"]),
        "DicomTlsRemoteCertificateRequired": True,
    }).start()
    yield server
    server.stop()


def _options(pki, ca_key: str = "ca") -> SendOptions:
    client_cert, client_key = pki["client"]
    return SendOptions(timeout=5, retries=1, retry_delay=0.1, tls_ca_file=str(pki[ca_key]),
                       tls_cert_file=str(client_cert), tls_key_file=str(client_key))


def test_c_store_over_dicom_tls_with_client_certificates(namespace, tls_orthanc, pki, tmp_path):
    datasets = write_run(tmp_path, seed=11)
    target = tls_orthanc.dicom_target.replace("dicom://", "dicom-tls://")
    with namespace.entered():
        summary = send_outputs(tmp_path, target, options=_options(pki))
    assert summary.ok and summary.sent == 4, str(summary)
    for dataset in datasets.values():
        assert tls_orthanc.instance_id(dataset.SOPInstanceUID)


def test_a_pacs_certificate_from_another_ca_is_refused_and_not_retried(namespace, tls_orthanc, pki, tmp_path):
    write_run(tmp_path, seed=12)
    target = tls_orthanc.dicom_target.replace("dicom://", "dicom-tls://")
    with namespace.entered():
        summary = send_outputs(tmp_path, target, options=_options(pki, ca_key="other_ca"))
    assert not summary.ok and summary.sent == 0
    (error,) = {record["error"] for record in summary.failed}
    assert "TLS handshake" in error and "DERMSEG_TLS_CA_FILE" in error
    assert {record["attempts"] for record in summary.failed} == {1}


def test_plain_dicom_to_the_tls_port_sends_nothing(namespace, tls_orthanc, tmp_path):
    write_run(tmp_path, seed=13)
    with namespace.entered():
        summary = send_outputs(tmp_path, tls_orthanc.dicom_target, **QUICK)
    assert not summary.ok and summary.sent == 0


def test_dicom_tls_targets_parse_and_options_check_their_files():
    from monai_app.pacs import TargetError, parse_targets

    (target,) = parse_targets("dicom-tls://PACS@pacs.hospital.local:2762")
    assert (target.scheme, target.called_aet, target.port) == ("dicom-tls", "PACS", 2762)
    assert target.label == "dicom-tls://PACS@pacs.hospital.local:2762"
    with pytest.raises(TargetError, match="certificate and its key go together"):
        SendOptions(tls_cert_file="edge.crt")


USER, PASSWORD, TOKEN = "edge", "p@ss,word", "dermseg-test-token"
BEARER_FILTER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  if string.sub(uri, 1, 10) == '/dicom-web' then
    return httpHeaders['authorization'] == 'Bearer %s'
  end
  return true
end
""" % TOKEN


@pytest.fixture(scope="module")
def basic_auth_orthanc(namespace, tmp_path_factory):
    server = Orthanc(namespace, tmp_path_factory.mktemp("orthanc-basic"), aet="BASICPACS", user=(USER, PASSWORD)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bearer_orthanc(namespace, tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc-bearer")
    (folder / "bearer.lua").write_text(BEARER_FILTER)
    server = Orthanc(namespace, folder, aet="BEARERPACS", extra={"LuaScripts": [str(folder / "bearer.lua")]}).start()
    yield server
    server.stop()


def _with_user(url: str, user: str, password: str) -> str:
    credentials = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@"
    return url.replace("http://", "http://" + credentials)


def test_stow_rs_with_basic_authentication(namespace, basic_auth_orthanc, tmp_path):
    datasets = write_run(tmp_path, seed=21)
    with namespace.entered():
        refused = send_outputs(tmp_path, _with_user(basic_auth_orthanc.dicomweb_url, USER, "wrong"), **QUICK)
        summary = send_outputs(tmp_path, _with_user(basic_auth_orthanc.dicomweb_url, USER, PASSWORD), **QUICK)
    assert not refused.ok and all("not authorised" in r["error"] and r["attempts"] == 1 for r in refused.failed)
    assert "wrong" not in str(refused) and PASSWORD not in str(summary)
    assert summary.ok and summary.sent == 4, str(summary)
    assert basic_auth_orthanc.instance_id(datasets["seg"].SOPInstanceUID)


def test_stow_rs_with_a_bearer_token(namespace, bearer_orthanc, tmp_path):
    datasets = write_run(tmp_path, seed=22)
    with namespace.entered():
        refused = send_outputs(tmp_path, bearer_orthanc.dicomweb_url, options=SendOptions(retries=0, dicomweb_token="nope"))
        summary = send_outputs(tmp_path, bearer_orthanc.dicomweb_url, options=SendOptions(retries=0, dicomweb_token=TOKEN))
    assert not refused.ok and all("not authorised" in r["error"] for r in refused.failed)
    assert summary.ok and summary.sent == 4, str(summary)
    assert bearer_orthanc.instance_id(datasets["sr"].SOPInstanceUID)
