"""The whole app end to end, as `python -m monai_app` runs it, and its MAP packaging configuration."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import PIL.Image
import pydicom
import pytest
import torch

from networks.preprocessing import logits_to_probability, probability_to_mask, read_rgb, rgb_to_model_input
from operators.dicom_outputs import REVIEW_SERIES_DESCRIPTION, SERIES_DESCRIPTION
from operators.loader import dicom_to_rgb

from _app_helpers import (
    PYTHON,
    REPO,
    SAMPLES,
    SECONDARY_CAPTURE,
    TINY_MODEL_METADATA,
    VL_PHOTOGRAPHIC,
    dciodvfy_errors,
    isic_rgb,
    export_onnx_like_the_bundle,
    non_photo_dicom,
    photo_dataset,
    read_results,
    run_app,
    save_dicom,
)

SAMPLE_INPUT = SAMPLES / "input"
RESULT_KEYS = {"source_file", "source_sop_instance_uid", "status", "error", "confidence", "route", "outputs"}


@pytest.fixture(scope="module")
def sample_run(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = run_app(SAMPLE_INPUT, out, tiny_model_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _source_rgb(path: Path) -> np.ndarray:
    try:
        return dicom_to_rgb(pydicom.dcmread(path))
    except pydicom.errors.InvalidDicomError:
        return read_rgb(path)


def test_samples_end_to_end(sample_run, tiny_model_path):
    out, _ = sample_run
    cases = read_results(out)["cases"]
    inputs = sorted(p.relative_to(SAMPLE_INPUT).as_posix() for p in SAMPLE_INPUT.rglob("*") if p.is_file())
    assert sorted(c["source_file"] for c in cases) == inputs
    model = torch.jit.load(str(tiny_model_path))
    for case in cases:
        assert RESULT_KEYS <= set(case) and case["status"] == "ok" and case["error"] is None, case
        assert 0.0 <= case["confidence"] <= 1.0 and case["route"] in ("accepted", "review")
        assert ("lesion_area_mm2" in case) != ("lesion_area_px" in case)
        assert case["model"] == {"name": TINY_MODEL_METADATA["name"], "version": TINY_MODEL_METADATA["version"]}
        for kind in ("seg", "seg_probability", "sr", "overlay_png", "overlay_sc"):
            assert (out / case["outputs"][kind]).is_file(), kind
        assert ("source" in case["outputs"]) == case["source_file"].endswith(".jpg")
        for kind in ("seg", "seg_probability", "sr", "overlay_sc", "source"):
            if kind in case["outputs"]:
                assert dciodvfy_errors(out / case["outputs"][kind]) == [], (case["source_file"], kind)

        # the SEG holds exactly what the model says about the source image (shared preprocessing)
        rgb = _source_rgb(SAMPLE_INPUT / case["source_file"])
        with torch.inference_mode():
            probability = logits_to_probability(model(rgb_to_model_input(rgb)[None]), rgb.shape[:2])
        expected = probability_to_mask(probability)[0, 0].numpy()
        seg = hd.seg.segread(out / case["outputs"]["seg"])
        # a case waiting for review says so where a viewer's study list shows it
        expected_description = REVIEW_SERIES_DESCRIPTION if case["route"] == "review" else SERIES_DESCRIPTION["seg"]
        assert seg.SeriesDescription == expected_description
        mask = seg.get_pixels_by_source_instance([case["source_sop_instance_uid"]], combine_segments=True)[0]
        undecided = np.abs(probability[0, 0].numpy() - 0.5) < 1e-4  # batch vs single call: last-bit float noise
        np.testing.assert_array_equal(mask[~undecided], expected[~undecided])
        assert (mask != expected).mean() < 1e-3

        # the SR says what results.json says
        report = hd.sr.srread(out / case["outputs"]["sr"])
        (group,) = report.content.get_planar_roi_measurement_groups()
        values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values["111012"][0] == pytest.approx(case["confidence"], abs=1e-4)
        if "lesion_area_mm2" in case:
            assert values["42798000"] == (pytest.approx(case["lesion_area_mm2"], abs=1e-3), "mm2")
        else:
            assert values["42798000"] == (pytest.approx(case["lesion_area_px"]), "{pixels}")
            assert case["lesion_area_px"] == int(mask.sum())
        assert seg.SOPInstanceUID in str(group)


def test_samples_run_logs_no_patient_data(sample_run):
    _, result = sample_run
    log = result.stdout + result.stderr
    for value in ("Moreau", "Okafor", "DERM-1001", "DERM-1002", "19680412", "ACC1001"):
        assert value not in log


def test_every_input_kind_in_one_batch(tmp_path, tiny_model_path):
    """The five kinds, the odd ones, and bad files side by side: each gets its entry, the batch goes on."""
    src = tmp_path / "in"
    rgb = isic_rgb("ISIC_0000003", 80)
    save_dicom(photo_dataset(rgb, compression="none"), src / "dms" / "raw.dcm")
    save_dicom(photo_dataset(isic_rgb("ISIC_0000001", 80), compression="jpeg"), src / "dms" / "jpeg.dcm")
    save_dicom(photo_dataset(rgb, sop_class_uid=VL_PHOTOGRAPHIC, compression="jpeg"), src / "xc.dcm")
    save_dicom(photo_dataset(rgb, sop_class_uid=SECONDARY_CAPTURE), src / "sc.dcm")
    save_dicom(photo_dataset(isic_rgb("ISIC_0000004", 80), compression="ybr-header-rgb-bytes"), src / "isic2020.dcm")
    for n in (1, 2):  # two photos of one series
        ds = photo_dataset(isic_rgb(f"ISIC_000000{n + 5}", 64), study_instance_uid="1.2.3.99",
                           series_instance_uid="1.2.3.99.1", instance_number=n)
        save_dicom(ds, src / "series" / f"IM{n}.dcm")
    (src / "phone").mkdir()
    PIL.Image.fromarray(isic_rgb("ISIC_0000000", 90)).save(src / "phone" / "photo.jpg")
    PIL.Image.fromarray(isic_rgb("ISIC_0000009", 72)).save(src / "phone" / "photo.png")
    (src / "other").mkdir()
    non_photo_dicom(src / "other" / "ct.dcm", "1.2.840.10008.5.1.4.1.1.2", "CT")
    non_photo_dicom(src / "other" / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.33", "SR")
    good = (src / "dms" / "raw.dcm").read_bytes()
    (src / "other" / "corrupt.dcm").write_bytes(good[:1000])

    out = tmp_path / "out"
    result = run_app(src, out, tiny_model_path, env={"DERMSEG_CONFIDENCE_THRESHOLD": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    by_file = {c["source_file"]: c for c in read_results(out)["cases"]}
    expected_ok = ["dms/jpeg.dcm", "dms/raw.dcm", "isic2020.dcm", "phone/photo.jpg", "phone/photo.png", "sc.dcm",
                   "series/IM1.dcm", "series/IM2.dcm", "xc.dcm"]
    assert sorted(f for f, c in by_file.items() if c["status"] == "ok") == expected_ok
    assert all(by_file[f]["route"] == "accepted" for f in expected_ok)  # threshold 0 from the environment
    assert by_file["other/ct.dcm"]["status"] == "skipped" and "CT Image Storage" in by_file["other/ct.dcm"]["error"]
    assert by_file["other/sr.dcm"]["status"] == "skipped"
    corrupt = by_file["other/corrupt.dcm"]
    assert corrupt["status"] == "error" and corrupt["error"].startswith("other/corrupt.dcm: loading failed")
    assert corrupt["outputs"] == {}
    for name in expected_ok:
        assert dciodvfy_errors(out / by_file[name]["outputs"]["seg"]) == [], name
    # header says YBR_FULL_422, bytes are RGB: segmented from the right colours
    overlay = np.asarray(PIL.Image.open(out / by_file["isic2020.dcm"]["outputs"]["overlay_png"]))
    untouched = overlay == isic_rgb("ISIC_0000004", 80)
    assert untouched.all(axis=-1).mean() > 0.1


def test_batch_that_cannot_run_exits_non_zero(tmp_path, tiny_model_path):
    (tmp_path / "in").mkdir()
    missing = run_app(tmp_path / "in", tmp_path / "out", tmp_path / "in")  # a folder without a model file
    assert missing.returncode == 2 and "model" in missing.stderr
    bad_setting = run_app(tmp_path / "in", tmp_path / "out", tiny_model_path, env={"DERMSEG_CONFIDENCE_THRESHOLD": "2"})
    assert bad_setting.returncode == 2 and "DERMSEG_CONFIDENCE_THRESHOLD" in bad_setting.stderr
    (tmp_path / "a_file").write_text("")
    not_a_folder = run_app(tmp_path / "in", tmp_path / "a_file", tiny_model_path)
    assert not_a_folder.returncode != 0


def test_the_app_program_leaves_out_the_unused_packages_and_an_import_of_it_does_not(tmp_path):
    """MONAI imports ignite, matplotlib, nibabel, scipy.signal, CuPy and TensorBoard wherever they are installed;
    ``python -m monai_app`` leaves them out (monai_app/startup.py) and still has scipy.ndimage for the mask
    clean-up; importing the module keeps them all."""
    probe = (
        "import os, runpy, sys\n"
        "import numpy as np\n"
        "def leave(status):\n    raise SystemExit(status)\n"
        "os._exit = leave  # the program ends with os._exit; this probe goes on to look at what it imported\n"
        "unused = sys.argv[3].split(',')\n"
        "sys.argv = ['monai_app', '-i', sys.argv[1], '-o', sys.argv[2]]\n"
        "try:\n    runpy.run_module('monai_app', run_name='__main__')\n"
        "except SystemExit as stop:\n    print('exit', stop.code)\n"
        "print('absent', sorted(n for n in unused if sys.modules.get(n, 0) is None))\n"
        "from networks.preprocessing import clean_mask\n"
        "ring = np.pad(np.pad(np.zeros((3, 3), bool), 2, constant_values=True), 1)\n"
        "print('filled', int(clean_mask(ring, 'largest+fill_holes').sum()), 'of', int(ring.sum()))\n"
    )
    unused = "cupy,ignite,matplotlib,nibabel,scipy.signal,tensorboard"
    (tmp_path / "in").mkdir()
    env = dict(os.environ, DERMSEG_CONFIDENCE_THRESHOLD="2")  # stops at the settings check, after the imports
    program = subprocess.run([PYTHON, "-c", probe, str(tmp_path / "in"), str(tmp_path / "out"), unused], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=240)
    assert "exit 2" in program.stdout, program.stderr[-2000:]
    assert f"absent {unused.split(',')}" in program.stdout
    assert "filled 49 of 40" in program.stdout, program.stderr[-2000:]  # the 7x7 ring with its 3x3 hole filled
    imported = subprocess.run([PYTHON, "-c", "import monai_app.__main__, ignite; print('ignite', ignite.__version__)"],
                              cwd=REPO, capture_output=True, text=True, timeout=240)
    assert imported.returncode == 0 and "ignite 0." in imported.stdout, imported.stderr[-2000:]


# --------------------------------------------------------------------------------------------- packaging


def test_app_yaml_gives_app_and_pkg_manifests(tmp_path):
    """The manifests `monai-deploy package` writes, produced with holoscan-cli 4.2.0's own configuration reader."""
    from holoscan_cli.packager.config_reader import ApplicationConfiguration
    from holoscan_cli.packager.parameters import PackageBuildParameters

    from monai_app.stage_map import stage

    manifests = {}
    for profile in ("cpu-edge-box", "gpu-box"):
        staged = stage(tmp_path / profile, profile)
        config = ApplicationConfiguration()
        config.read(staged / "app.yaml")
        parameters = PackageBuildParameters()
        parameters.application = staged / "app"
        app_json = config.populate_app_manifest(parameters).data
        pkg_json = config.populate_package_manifest(parameters).data
        (staged / "app.json").write_text(json.dumps(app_json, default=str))
        (staged / "pkg.json").write_text(json.dumps(pkg_json, default=str))
        manifests[profile] = (json.loads((staged / "app.json").read_text()), json.loads((staged / "pkg.json").read_text()))
        assert config.title() == "DermSeg skin lesion segmentation (RIBCUNet)"
        assert (staged / "app" / "requirements.txt").read_text() == (REPO / "monai_app" / "requirements.txt").read_text()

    app_json, pkg_json = manifests["cpu-edge-box"]
    assert app_json["version"] == pkg_json["version"] == "0.1.0"
    assert app_json["command"] == '["python3", "/opt/holoscan/app"]'
    assert app_json["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert app_json["input"]["formats"] == ["file"] and app_json["output"]["formats"] == ["file"]
    assert pkg_json["resources"] == {"cpu": 2, "gpu": 0, "memory": "4Gi", "sharedMemory": "1Gi"}
    assert manifests["gpu-box"][1]["resources"]["gpu"] == 1 and manifests["gpu-box"][1]["resources"]["gpuMemory"] == "4Gi"


def test_staged_map_folder_runs_as_the_map_runs_it(tmp_path, tiny_model_path):
    """`python3 /opt/holoscan/app` with the HOLOSCAN_* variables, from the staged folder alone."""
    from monai_app.stage_map import stage

    staged = stage(tmp_path / "map", "cpu-edge-box")
    models = tmp_path / "models" / "dermseg"
    models.mkdir(parents=True)
    shutil.copy(tiny_model_path, models / "model.ts")
    export_onnx_like_the_bundle(tiny_model_path, models / "model.onnx")  # both exports, as the bundle ships them
    inputs = tmp_path / "input"
    inputs.mkdir()
    shutil.copy(SAMPLE_INPUT / "study-1001" / "dermoscopy" / "IM0001.dcm", inputs / "IM0001.dcm")
    env = {"HOLOSCAN_INPUT_PATH": str(inputs), "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "output"),
           "HOLOSCAN_MODEL_PATH": str(tmp_path / "models"), "PYTHONPATH": ""}
    result = subprocess.run(
        ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', PYTHON, str(staged / "app")],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ONNX Runtime on cpu" in result.stderr + result.stdout  # the CPU path serves model.onnx
    (case,) = read_results(tmp_path / "output")["cases"]
    assert case["status"] == "ok"
