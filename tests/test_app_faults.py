"""Faults: the app killed with SIGKILL mid-batch, then run again over the same IN and OUT.

Afterwards OUT holds no partial file, every input has exactly one results.json entry, every case its complete set of
outputs, and the cases written before the kill were re-written as the same DICOM objects (deterministic UIDs), so a
PACS that received them before replaces rather than duplicates them.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import PIL.Image
import pydicom

from _app_helpers import DATA_512, PYTHON, REPO, isic_rgb, photo_dataset, read_results, run_app, save_dicom
from _bad_input_helpers import partial_files

N_CASES = 30
CASE_OUTPUTS = {"seg", "seg_probability", "sr", "overlay_png", "overlay_sc"}


def _inputs(folder: Path) -> list:
    names = sorted(p.stem for p in (DATA_512 / "ISIC2018_Task1-2_Training_Input").glob("ISIC_*.jpg"))[:N_CASES]
    files = []
    for index, name in enumerate(names):
        rgb = isic_rgb(name, 48)
        if index % 5 == 4:  # some plain photos among the DICOM files
            path = folder / f"photo_{index:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(rgb).save(path)
        else:
            path = save_dicom(photo_dataset(rgb, seed=f"faults-{name}"), folder / f"case_{index:02d}.dcm")
        files.append(path.name)
    return files


def _uids(out: Path) -> dict:
    """For each case folder, the SOPInstanceUID of every DICOM output in it."""
    return {
        folder.name: {p.name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                      for p in folder.glob("*.dcm")}
        for folder in out.iterdir() if folder.is_dir()
    }


def test_killed_mid_batch_then_rerun_completes_without_partial_files(tmp_path, tiny_model_path):
    source, out = tmp_path / "in", tmp_path / "out"
    files = _inputs(source)
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', PYTHON, "-m", "monai_app",
               "-i", str(source), "-o", str(out), "-m", str(tiny_model_path)]
    env = {**os.environ, "DERMSEG_BATCH_SIZE": "4"}
    app = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and app.poll() is None:
            if (out / "results.json").exists() or any(p.is_dir() for p in out.glob("1.*")):
                break
            time.sleep(0.05)
        assert app.poll() is None, "the app finished before it could be killed: make the batch longer"
        os.killpg(app.pid, signal.SIGKILL)  # mid-batch: some cases written, some half written, most not started
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
        app.wait(timeout=30)
    assert app.returncode == -signal.SIGKILL
    killed = read_results(out)["cases"] if (out / "results.json").exists() else []
    assert len(killed) < len(files)  # it really stopped part way
    before = _uids(out)
    # what a kill between a temporary file's creation and its rename leaves (the timing rarely hits it by chance)
    (out / ".results.json.k1ll3d.part").write_bytes(b'{"cases": [')
    if before:
        (out / next(iter(before)) / ".seg.dcm.k1ll3d.part").write_bytes(b"\x00" * 200)

    rerun = run_app(source, out, tiny_model_path, env={"DERMSEG_BATCH_SIZE": "4"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert partial_files(out) == []
    cases = read_results(out)["cases"]
    assert sorted(c["source_file"] for c in cases) == sorted(files)  # one entry per input, none twice
    assert all(c["status"] == "ok" for c in cases), [c["error"] for c in cases if c["status"] != "ok"]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(c["source_sop_instance_uid"] for c in cases)  # one folder per case, no stray one
    after = _uids(out)
    for case in cases:
        assert set(case["outputs"]) >= CASE_OUTPUTS
        written = {p.name for p in (out / case["source_sop_instance_uid"]).iterdir()}
        assert written == {Path(r).name for r in case["outputs"].values()}
    for folder, uids in before.items():  # what the killed run wrote was re-written as the same objects
        for name, uid in uids.items():
            assert after[folder][name] == uid, (folder, name)
