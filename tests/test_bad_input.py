"""Bad and odd input: one app run over a folder of ~75 bad, odd and good files, then many small checks.

Every file gets exactly one results.json entry (ok, or error / skipped with a message naming the file and the
problem), the good files in the same batch are segmented, nothing partial is left in OUT, nothing is written
outside OUT, no patient data reaches the log.  The files are built by tests/_bad_input_helpers.py.
"""

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pydicom
import pytest
import torch

from _app_helpers import PYTHON, REPO, read_results
from _bad_input_helpers import (
    SECRETS,
    UNREADABLE,
    build_bad_inputs,
    partial_files,
    tree,
)

EXPECTS = {e.name: e for e in build_bad_inputs(None)}  # the list alone, nothing written: for parametrising
CASE_OUTPUTS = {"seg", "seg_probability", "sr", "overlay_png", "overlay_sc"}
# Run the app without the capabilities that let root read a chmod-000 file, so permissions bite as for any user.
DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search",
            "--"]


def _can_drop_dac() -> bool:
    if os.geteuid() != 0:
        return True  # permissions bite already
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(DROP_DAC + ["true"], capture_output=True)
    return probe.returncode == 0


ROOT_CANNOT_DROP_DAC = not _can_drop_dac()


def run_app_as_user(input_path: Path, output_path: Path, model_path: Path, env: dict | None = None, timeout=300):
    """``python -m monai_app`` as tests/_app_helpers.run_app runs it, without root's right to read anything."""
    prefix = DROP_DAC if os.geteuid() == 0 and not ROOT_CANNOT_DROP_DAC else []
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', *prefix, PYTHON, "-m", "monai_app",
               "-i", str(input_path), "-o", str(output_path), "-m", str(model_path)]
    return subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, tiny_model_path):
    """IN and OUT two levels below ``base``: a UID like ``../../x`` would land inside ``base``, where we look."""
    base = tmp_path_factory.mktemp("bad")
    work = base / "a" / "b"
    source = work / "in"
    expects = build_bad_inputs(source)
    assert {e.name for e in expects} == set(EXPECTS)
    (work / "out").mkdir()  # made first, so that only what is inside it may change
    before = tree(base)
    started = time.monotonic()
    result = run_app_as_user(source, work / "out", tiny_model_path, env={"DERMSEG_BATCH_SIZE": "16"})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    entries = {c["source_file"]: c for c in read_results(work / "out")["cases"]}
    return {"base": base, "in": source, "out": work / "out", "before": before, "after": tree(base),
            "entries": entries, "log": result.stdout + result.stderr, "seconds": elapsed}


def test_every_file_has_exactly_one_entry(bad_run):
    cases = read_results(bad_run["out"])["cases"]
    names = [c["source_file"] for c in cases]
    assert len(names) == len(set(names))
    # the folder loop, the folder named like a file and the link targets give no entry of their own
    assert sorted(names) == sorted(EXPECTS)
    assert len(EXPECTS) >= 60
    assert {c["status"] for c in cases} == {"ok", "error", "skipped"}


@pytest.mark.parametrize("name", sorted(EXPECTS))
def test_entry(bad_run, name):
    expect = EXPECTS[name]
    if name == UNREADABLE and ROOT_CANNOT_DROP_DAC:
        pytest.skip("running as root without setpriv: a chmod-000 file stays readable (FIFO and links still tested)")
    entry = bad_run["entries"][name]
    assert entry["status"] == expect.status, entry["error"]
    if expect.status != "ok":
        assert entry["error"].startswith(f"{name}: "), entry["error"]  # the message names the file
        for word in expect.words:
            assert word in entry["error"], entry["error"]
        assert entry["outputs"] == {}
        assert str(bad_run["base"]) not in entry["error"]  # and names no site folder
        return
    assert entry["error"] is None and set(entry["outputs"]) >= CASE_OUTPUTS
    out = bad_run["out"]
    seg = pydicom.dcmread(out / entry["outputs"]["seg"])
    assert (seg.Rows, seg.Columns) == expect.shape  # EXIF-rotated photos: the upright size
    if expect.patient_name is not None:
        assert str(seg.PatientName) == expect.patient_name
        assert str(pydicom.dcmread(out / entry["outputs"]["sr"]).PatientName) == expect.patient_name
    if expect.rgb is not None:
        lossy = name.endswith(".jpg")
        if "source" in entry["outputs"]:  # a plain photo: its DICOM wrapper holds exactly what was segmented
            segmented = pydicom.dcmread(out / entry["outputs"]["source"]).pixel_array
            assert segmented.shape == expect.rgb.shape
            if lossy:
                assert np.abs(segmented.astype(int) - expect.rgb).mean() < 6
            else:
                np.testing.assert_array_equal(segmented, expect.rgb)
        else:  # a DICOM file: the overlay is the photo outside the lesion outline
            overlay = np.asarray(PIL.Image.open(out / entry["outputs"]["overlay_png"]))
            assert (overlay == expect.rgb).all(axis=-1).mean() > 0.3


def test_no_partial_output(bad_run):
    out = bad_run["out"]
    assert partial_files(out) == []
    ok = {e["source_sop_instance_uid"]: e for e in bad_run["entries"].values() if e["status"] == "ok"}
    folders = {p.name for p in out.iterdir() if p.is_dir()}
    assert folders == set(ok)  # no folder for an error case, none left empty
    for uid, entry in ok.items():
        written = sorted(p.relative_to(out).as_posix() for p in (out / uid).iterdir())
        assert written == sorted(entry["outputs"].values())
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["results.json"]


def test_nothing_written_outside_out(bad_run):
    """UIDs like ``../../x``, ``1.2/../3``, ``/tmp/...`` and overlong ones never become paths: only OUT changed."""
    before, after = bad_run["before"], bad_run["after"]
    out_prefix = "a/b/out"
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed and all(k == out_prefix or k.startswith(out_prefix + "/") for k in changed), sorted(changed)[:10]
    assert not Path("/tmp/dermseg-escape").exists()
    for entry in bad_run["entries"].values():
        for relative in entry["outputs"].values():
            assert (bad_run["out"] / relative).resolve().is_relative_to(bad_run["out"].resolve())


def test_no_patient_data_in_the_log(bad_run):
    for secret in SECRETS:
        assert secret not in bad_run["log"]


def test_bad_batch_runs_in_reasonable_time(bad_run):
    # a bomb refused late, or a FIFO opened, would show here as minutes
    assert bad_run["seconds"] < 240, bad_run["seconds"]


# --------------------------------------------------------------------------------------------- the loader alone


@pytest.mark.parametrize("name", ["jpeg_stream_bomb.dcm", "deflate_bomb.dcm", "huge_declared_jpeg.dcm",
                                  "photos/jpeg_bomb_below_pillow_limit.jpg", "photos/huge_10000x10000.png"])
def test_bombs_are_refused_before_any_large_allocation(tmp_path_factory, name):
    """Each declares or inflates to hundreds of MB or more; refusing it must cost no memory and no time."""
    from operators.loader import load_file

    folder = tmp_path_factory.getbasetemp() / "bombs"
    if not folder.exists():
        build_bad_inputs(folder)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_before = _rss_kib()
    started = time.monotonic()
    case = load_file(folder / name, name)
    elapsed = time.monotonic() - started
    assert case.status == "error" and all(w in case.error for w in EXPECTS[name].words), case.error
    assert _rss_kib() - rss_before < 50 * 1024
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024
    assert elapsed < 1.0


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


# --------------------------------------------------------------------------------------------- whole runs


def test_empty_input_folder(tmp_path, tiny_model_path):
    (tmp_path / "in").mkdir()
    result = run_app_as_user(tmp_path / "in", tmp_path / "out", tiny_model_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_results(tmp_path / "out")["cases"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json"]


def test_output_folder_that_cannot_be_written(tmp_path, tiny_model_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "a_file").write_text("")
    under_a_file = run_app_as_user(tmp_path / "in", tmp_path / "a_file" / "out", tiny_model_path)
    assert under_a_file.returncode == 2 and "cannot run" in under_a_file.stderr
    if ROOT_CANNOT_DROP_DAC:
        pytest.skip("running as root without setpriv: a read-only folder stays writable")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    result = run_app_as_user(tmp_path / "in", read_only, tiny_model_path)
    assert result.returncode == 2
    assert "not writable" in result.stderr and str(read_only) in result.stderr
    assert list(read_only.iterdir()) == []


# --------------------------------------------------------------------------------------------- models


class _Payload:
    """Unpickling this runs a command: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_model_is_refused_and_never_unpickled(tmp_path, zip_format):
    marker = tmp_path / "unpickled"
    model = tmp_path / "model.pt"
    torch.save({"state_dict": _Payload(marker)}, model, _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    (tmp_path / "in").mkdir()
    result = run_app_as_user(tmp_path / "in", tmp_path / "out", model)
    assert result.returncode == 2
    assert "neither a TorchScript archive nor an ONNX model" in result.stderr and "model.pt" in result.stderr
    assert not marker.exists()  # refused from the archive layout, never loaded
    assert not (tmp_path / "out" / "results.json").exists()


# --------------------------------------------------------------------------------------------- writers


def test_case_failing_while_written_leaves_nothing(tmp_path):
    """A plain photo's wrapper (source.dcm) is written before its SEG: when the SEG then fails, the wrapper goes
    too, and so does the case folder; the next case in the batch is written as usual."""
    from _app_helpers import isic_rgb, run_operator_alone
    from operators import LesionSegWriterOperator, ModelInfo
    from operators.loader import load_file

    cases = []
    for name, seed_image in (("broken.png", "ISIC_0000000"), ("fine.png", "ISIC_0000001")):
        rgb = isic_rgb(seed_image, 40)
        PIL.Image.fromarray(rgb).save(tmp_path / name)
        case = load_file(tmp_path / name, name)
        assert case.ok, case.error
        case.mask = np.zeros(rgb.shape[:2], np.uint8)
        case.probability = np.zeros(rgb.shape[:2], np.float32)
        case.model = ModelInfo("dermseg_tiny_test", "0.0.1-test")
        cases.append(case)
    cases[0].mask = np.zeros((5, 7), np.uint8)  # a mask that does not fit its image: no SEG can be built
    out = tmp_path / "out"
    out.mkdir()
    emitted = run_operator_alone(
        lambda app: LesionSegWriterOperator(app, output_folder=out, name="w"), cases, outputs=("cases", "segs")
    )
    (batch,), (segs,) = emitted["cases"], emitted["segs"]
    broken, fine = batch
    assert set(segs) == {fine.sop_instance_uid}  # the SR writer gets no SEG for the broken case
    assert broken.status == "error" and broken.error.startswith("broken.png: writing the DICOM-SEG failed")
    assert broken.outputs == {}
    assert fine.ok and set(fine.outputs) == {"source", "seg", "seg_probability"}
    assert [p.name for p in out.iterdir()] == [fine.sop_instance_uid]  # no folder, no source.dcm for the broken one
    assert partial_files(out) == []
