"""Each operator of the MONAI Deploy app alone, and the plain functions behind it, on files built from real images."""

import dataclasses
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import PIL.Image
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from networks.preprocessing import clean_mask, logits_to_probability, probability_to_mask, rgb_to_model_input
from operators import (
    Case,
    ConfidenceRoutingOperator,
    JoinWritersOperator,
    LesionSegmentationOperator,
    LesionSegWriterOperator,
    MeasurementReportWriterOperator,
    ModelInfo,
    OverlayWriterOperator,
    ReleasePixelsOperator,
    ResultsWriterOperator,
    SkinPhotoLoaderOperator,
)
from operators.results import case_entry, read_results, write_results
from operators.case import atomic_write_bytes, case_output_dir, is_valid_uid
from operators.confidence import case_confidence, flip_agreement, lesion_confidence, route_for
from operators.dicom_outputs import (
    build_binary_seg,
    build_fractional_seg,
    build_measurement_report,
    build_overlay_sc,
    lesion_area,
    overlay_rgb,
)
from operators.loader import MAX_PIXELS, iter_input_files, load_file
from networks.export import export_onnx
from operators.model import OnnxRuntimeModel, load_model, load_torchscript_model, read_model_info, resolve_model_file
from operators.segmentation import segment_cases

from _app_helpers import (
    DERMOSCOPIC_PHOTOGRAPHY,
    non_photo_dicom,
    SECONDARY_CAPTURE,
    TINY_MODEL_METADATA,
    VL_PHOTOGRAPHIC,
    dciodvfy_errors,
    isic_rgb,
    export_onnx_like_the_bundle,
    quantize_like_the_bundle,
    photo_dataset,
    run_operator_alone,
    save_dicom,
)

MODEL_INFO = ModelInfo(TINY_MODEL_METADATA["name"], TINY_MODEL_METADATA["version"])


@pytest.fixture(scope="module")
def rgb():
    return isic_rgb("ISIC_0000000", 96)


# --------------------------------------------------------------------------------------------- loader


@pytest.mark.parametrize(
    "sop_class, compression",
    [
        (DERMOSCOPIC_PHOTOGRAPHY, "none"),
        (DERMOSCOPIC_PHOTOGRAPHY, "jpeg"),
        (VL_PHOTOGRAPHIC, "none"),
        (VL_PHOTOGRAPHIC, "jpeg"),
        (SECONDARY_CAPTURE, "none"),
        (DERMOSCOPIC_PHOTOGRAPHY, "ybr-header-rgb-bytes"),
    ],
)
def test_loader_reads_dicom_photographs(tmp_path, rgb, sop_class, compression):
    path = save_dicom(photo_dataset(rgb, sop_class_uid=sop_class, compression=compression), tmp_path / "x.dcm")
    case = load_file(path, "x.dcm")
    assert case.ok, case.error
    assert case.rgb.shape == rgb.shape and case.rgb.dtype == np.uint8
    if compression == "jpeg":  # lossy: close, not equal (and surely not left in YBR)
        assert np.abs(case.rgb.astype(int) - rgb).mean() < 4
    else:
        np.testing.assert_array_equal(case.rgb, rgb)
    assert not case.wrapped and case.source.SOPClassUID == sop_class
    assert "PixelData" not in case.source  # the pixels live in case.rgb only
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "StudyID", "AccessionNumber", "Modality"):
        assert keyword in case.source


def test_jpeg_photographs_decode_to_the_pixels_pydicom_decodes(tmp_path, rgb):
    """The loader decodes baseline JPEG in YCbCr with Pillow directly (a quarter of pydicom's time on a camera's
    photo): the pixels must be pydicom's own, and a larger photo must keep its size."""
    big = np.asarray(PIL.Image.fromarray(rgb).resize((640, 400)))
    path = save_dicom(photo_dataset(big, compression="jpeg"), tmp_path / "x.dcm")
    expected = pydicom.dcmread(path).pixel_array
    case = load_file(path, "x.dcm")
    assert case.ok, case.error
    np.testing.assert_array_equal(case.rgb, expected)


def test_a_camera_photo_is_resized_for_the_model_as_a_small_one_is():
    """Photos many times the model's size are resized in uint8 (fast): within the uint8 rounding of the float path."""
    rng = np.random.default_rng(0)
    photo = np.asarray(PIL.Image.fromarray(isic_rgb("ISIC_0000001", None)).resize((1600, 1100)))
    photo = np.clip(photo + rng.integers(-10, 11, photo.shape), 0, 255).astype(np.uint8)
    fast = rgb_to_model_input(photo)
    chw = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    reference = torch.nn.functional.interpolate(chw, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)[0]
    assert fast.shape == (3, 256, 256) and fast.dtype == torch.float32 and fast.is_contiguous()
    assert (fast - reference).abs().max() <= 1.0 / 255 + 1e-6


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_loader_wraps_plain_photos_as_vl_photographic(tmp_path, rgb, suffix):
    photo = tmp_path / f"phone{suffix}"
    PIL.Image.fromarray(rgb).save(photo, quality=95)
    case = load_file(photo, photo.name)
    assert case.ok and case.wrapped
    ds = case.source
    assert ds.SOPClassUID == VL_PHOTOGRAPHIC and ds.Modality == "XC"
    assert ds.PatientName == "" and ds.PatientID == ""  # no sidecar: empty patient fields
    assert all(is_valid_uid(ds.get(k)) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
    if suffix == ".png":
        np.testing.assert_array_equal(case.rgb, rgb)
    # the wrapper is a valid DICOM VL Photographic image
    out = tmp_path / "wrapped.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert dciodvfy_errors(out) == []
    np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, case.rgb)
    # the same photo gets the same UIDs (re-runs add nothing twice)
    assert load_file(photo, photo.name).source.SOPInstanceUID == ds.SOPInstanceUID


def test_loader_reads_sidecar_patient_fields_and_rejects_bad_ones(tmp_path, rgb):
    photo = tmp_path / "lesion.jpg"
    PIL.Image.fromarray(rgb).save(photo)
    (tmp_path / "lesion.jpg.json").write_text(json.dumps({"PatientName": "Émile^Zoë", "PatientID": "P-77", "PatientSex": "M"}))
    case = load_file(photo, "lesion.jpg")
    assert case.ok and str(case.source.PatientName) == "Émile^Zoë" and case.source.PatientID == "P-77"
    (tmp_path / "lesion.jpg.json").write_text(json.dumps({"PatientSex": "unknown"}))
    bad = load_file(photo, "lesion.jpg")
    assert bad.status == "error" and "lesion.jpg" in bad.error and "PatientSex" in bad.error
    assert [p.name for p in iter_input_files(tmp_path)] == ["lesion.jpg"]  # the sidecar is not an input
    (tmp_path / "out").mkdir()
    PIL.Image.fromarray(rgb).save(tmp_path / "out" / "overlay.png")
    assert [p.name for p in iter_input_files(tmp_path, exclude=tmp_path / "out")] == ["lesion.jpg"]


def test_loader_grey_and_rgba_png(tmp_path, rgb):
    grey = tmp_path / "grey.png"
    PIL.Image.fromarray(rgb).convert("L").save(grey)
    rgba = tmp_path / "rgba.png"
    PIL.Image.fromarray(rgb).convert("RGBA").save(rgba)
    for path in (grey, rgba):
        case = load_file(path, path.name)
        assert case.ok and case.rgb.shape == rgb.shape


def test_loader_skips_non_photo_dicom_and_reports_bad_files(tmp_path, rgb):
    ct = load_file(non_photo_dicom(tmp_path / "ct.dcm", "1.2.840.10008.5.1.4.1.1.2", "CT"), "ct.dcm")
    assert ct.status == "skipped" and "CT Image Storage" in ct.error
    sr = load_file(non_photo_dicom(tmp_path / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.33", "SR"), "sr.dcm")
    assert sr.status == "skipped" and "not a photograph" in sr.error
    (tmp_path / "notes.txt").write_text("not an image")
    assert load_file(tmp_path / "notes.txt", "notes.txt").status == "skipped"

    good = save_dicom(photo_dataset(rgb), tmp_path / "good.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    case = load_file(truncated, "truncated.dcm")
    assert case.status == "error" and case.error.startswith("truncated.dcm: loading failed")

    ds = photo_dataset(rgb)
    ds.Rows = ds.Columns = 20_000  # a decompression bomb's declared size, refused before decoding
    case = load_file(save_dicom(ds, tmp_path / "huge.dcm"), "huge.dcm")
    assert case.status == "error" and str(MAX_PIXELS) in case.error

    ds = photo_dataset(rgb)
    ds.SOPInstanceUID = "../../etc/passwd"
    case = load_file(save_dicom(ds, tmp_path / "evil.dcm"), "evil.dcm")
    assert case.status == "error" and "SOPInstanceUID" in case.error


def test_loader_operator_alone_walks_nested_folders_in_chunks(tmp_path, rgb):
    study = "1.2.3.4.5"
    series = "1.2.3.4.5.6"
    for n in (1, 2, 3):  # several photos in one series
        ds = photo_dataset(rgb, study_instance_uid=study, series_instance_uid=series, instance_number=n)
        save_dicom(ds, tmp_path / "a" / "b" / f"IM{n}.dcm")
    duplicate = tmp_path / "z" / "copy.dcm"
    duplicate.parent.mkdir()
    duplicate.write_bytes((tmp_path / "a" / "b" / "IM1.dcm").read_bytes())
    batches = run_operator_alone(
        lambda app: SkinPhotoLoaderOperator(app, input_path=tmp_path, chunk_size=3, name="load")
    )
    assert [len(b) for b in batches] == [3, 1] and [b.last for b in batches] == [False, True]
    cases = [c for b in batches for c in b]
    assert [c.source_file for c in cases] == ["a/b/IM1.dcm", "a/b/IM2.dcm", "a/b/IM3.dcm", "z/copy.dcm"]
    assert [c.status for c in cases] == ["ok", "ok", "ok", "error"]
    assert "duplicate SOPInstanceUID" in cases[3].error and "a/b/IM1.dcm" in cases[3].error


def test_loader_operator_alone_ends_a_chunk_of_large_photos_early(tmp_path, rgb):
    for n in range(5):
        save_dicom(photo_dataset(rgb, instance_number=n + 1), tmp_path / f"IM{n}.dcm")
    pixels = rgb.shape[0] * rgb.shape[1]
    batches = run_operator_alone(
        lambda app: SkinPhotoLoaderOperator(app, input_path=tmp_path, chunk_size=8, chunk_pixels=2 * pixels, name="load")
    )
    # a chunk takes photos until they hold the budget: two each here, the last one alone
    assert [len(b) for b in batches] == [2, 2, 1] and [b.last for b in batches] == [False, False, True]
    assert all(c.ok for b in batches for c in b)


def test_loader_operator_alone_on_empty_folder(tmp_path):
    batches = run_operator_alone(lambda app: SkinPhotoLoaderOperator(app, input_path=tmp_path, name="load"))
    assert len(batches) == 1 and list(batches[0]) == [] and batches[0].last


# --------------------------------------------------------------------------------------------- segmentation


def test_model_loads_as_torchscript_with_metadata(tiny_model_path, tmp_path):
    module, info = load_torchscript_model(tiny_model_path)
    assert info == MODEL_INFO
    folder = tmp_path / "models" / "dermseg"
    folder.mkdir(parents=True)
    (folder / "model.ts").write_bytes(tiny_model_path.read_bytes())
    assert resolve_model_file(tmp_path / "models") == folder / "model.ts"  # a MAP's model folder
    for legacy in (False, True):  # pickled checkpoints, old format and zip format: never loaded
        pickle = tmp_path / f"weights{legacy}.pt"
        torch.save({"w": torch.zeros(1)}, pickle, _use_new_zipfile_serialization=legacy)
        with pytest.raises(ValueError, match="TorchScript"):
            resolve_model_file(pickle)
    with pytest.raises(FileNotFoundError):
        resolve_model_file(tmp_path / "missing.ts")


@pytest.fixture(scope="module")
def tiny_onnx_path(tiny_model_path):
    return export_onnx_like_the_bundle(tiny_model_path, tiny_model_path.with_suffix(".onnx"))


def test_a_model_folder_is_served_by_onnx_runtime_on_cpu_and_torchscript_on_gpu(tiny_model_path, tiny_onnx_path, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.ts").write_bytes(tiny_model_path.read_bytes())
    (folder / "model.onnx").write_bytes(tiny_onnx_path.read_bytes())
    torch.save({"w": torch.zeros(1)}, folder / "model.pt")  # the bundle's state dict beside them: ignored
    assert resolve_model_file(folder, "cpu") == folder / "model.onnx"
    assert resolve_model_file(folder, "cuda") == folder / "model.ts"
    assert resolve_model_file(folder, kind="torchscript") == folder / "model.ts"
    assert load_torchscript_model(folder)[1] == MODEL_INFO  # the TorchScript one, whatever the device
    with pytest.raises(ValueError, match="a torchscript model is needed"):
        load_torchscript_model(folder / "model.onnx")
    model, info = load_model(folder)
    assert isinstance(model, OnnxRuntimeModel) and info == MODEL_INFO  # name and version from metadata_props
    (folder / "model.ts").unlink()
    assert resolve_model_file(folder, "cuda") == folder / "model.onnx"  # the only model there
    (folder / "other.onnx").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="at most one onnx model"):
        resolve_model_file(folder)


def test_a_cpu_gets_the_int8_model_unless_fp32_is_asked_for(tiny_model_path, tiny_onnx_path, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.ts").write_bytes(tiny_model_path.read_bytes())
    (folder / "model.onnx").write_bytes(tiny_onnx_path.read_bytes())
    quantize_like_the_bundle(tiny_onnx_path, folder / "model_int8.onnx")
    assert resolve_model_file(folder, "cpu") == folder / "model_int8.onnx"
    assert resolve_model_file(folder, "cpu", precision="fp32") == folder / "model.onnx"
    assert resolve_model_file(folder, "cuda") == folder / "model.ts"
    assert resolve_model_file(folder, kind="int8") == folder / "model_int8.onnx"
    model, info = load_model(folder)
    assert info.precision == "int8" and (info.name, info.version) == (MODEL_INFO.name, MODEL_INFO.version)
    with pytest.raises(ValueError, match="precision"):
        resolve_model_file(folder, precision="fp16")
    (folder / "model.onnx").unlink()
    (folder / "model.ts").unlink()
    with pytest.raises(FileNotFoundError):  # fp32 never falls back to the int8 model
        resolve_model_file(folder, "cpu", precision="fp32")
    # int8 on real images: the float model's masks but for pixels near the boundary, which for this random model's
    # near-zero logits are many (Dice 0.86-0.97 on an AVX2-only CPU; 0.26-0.66 there before the weights' range
    # was reduced, so this catches saturating kernels; tests/test_shipped_model.py holds the real model to more)
    float_model, _ = load_model(tiny_onnx_path)
    dices = []
    for i in range(3):
        image = rgb_to_model_input(isic_rgb(f"ISIC_000000{i}", None))[None]
        a, b = float_model(image) > 0, model(image) > 0
        dices.append(float(2 * (a & b).sum() / (a.sum() + b.sum())))
    assert min(dices) > 0.8 and np.mean(dices) > 0.88, dices


def test_a_broken_onnx_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"\x08\x07 not a protobuf model")
    with pytest.raises(ValueError, match="model.onnx: not a loadable ONNX model"):
        load_model(broken)


def test_onnx_runtime_and_torchscript_give_the_same_segmentation(tiny_model_path, tiny_onnx_path):
    """The app's CPU path (ONNX Runtime) against the reference export (TorchScript), on real images."""
    onnx_model, onnx_info = load_model(tiny_onnx_path)
    script_model, script_info = load_torchscript_model(tiny_model_path)
    assert onnx_info == script_info
    images = [isic_rgb(f"ISIC_000000{i}", None) for i in range(4)]
    results = {}
    for name, model in (("onnx", onnx_model), ("torchscript", script_model)):
        cases = [Case(source_file=str(i), rgb=im) for i, im in enumerate(images)]
        segment_cases(cases, model, onnx_info, torch.device("cpu"), batch_size=3)  # a full batch and a part one
        results[name] = cases
    for ours, reference in zip(results["onnx"], results["torchscript"]):
        assert ours.ok and reference.ok
        np.testing.assert_allclose(ours.probability, reference.probability, atol=1e-4)
        differing = ours.mask != reference.mask
        assert differing.mean() < 1e-4 and (np.abs(reference.probability[differing] - 0.5) < 1e-3).all()


def test_the_model_is_fed_the_input_size_its_metadata_states(tiny_model_path, tmp_path, rgb):
    """A model exported at 128x128 (its ONNX graph takes nothing else) is served at 128x128, by both runtimes."""
    module = torch.jit.load(str(tiny_model_path)).eval()
    metadata = {**TINY_MODEL_METADATA, "network_data_format": {"inputs": {"image": {"spatial_shape": [128, 128]}}}}
    onnx_path = tmp_path / "model.onnx"
    export_onnx(module, onnx_path, metadata=metadata, example_shape=(1, 3, 128, 128))
    model, info = load_model(onnx_path)
    assert info.input_size == (128, 128)
    served = Case(source_file="a", rgb=rgb)
    segment_cases([served], model, info, torch.device("cpu"))
    assert served.ok and served.mask.shape == rgb.shape[:2]
    fed_the_default = Case(source_file="b", rgb=rgb)
    segment_cases([fed_the_default], model, dataclasses.replace(info, input_size=(256, 256)), torch.device("cpu"))
    assert fed_the_default.status == "error"  # the size really comes from the metadata
    script_path = tmp_path / "model.ts"
    torch.jit.save(module, str(script_path), _extra_files={"metadata.json": json.dumps(metadata)})
    assert load_torchscript_model(script_path)[1].input_size == (128, 128)
    with pytest.raises(ValueError, match="spatial_shape"):
        read_model_info(json.dumps({"network_data_format": {"inputs": {"image": {"spatial_shape": [0, 128]}}}}), "m")


def test_masks_get_the_clean_up_the_model_metadata_states(tiny_model_path, tmp_path):
    """The app cleans each mask as the model's metadata says (the evaluation reads the same key)."""
    module = torch.jit.load(str(tiny_model_path)).eval()
    cleanup = {"network_data_format": {"outputs": {"pred": {"mask_cleanup": "largest+fill_holes"}}}}
    metadata = {**TINY_MODEL_METADATA, **cleanup}
    script_path = tmp_path / "model.ts"
    torch.jit.save(module, str(script_path), _extra_files={"metadata.json": json.dumps(metadata)})
    model, info = load_model(script_path)
    assert info.mask_cleanup == "largest+fill_holes"
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # the random model's mask is ragged
    cleaned, raw = Case(source_file="a", rgb=rgb), Case(source_file="b", rgb=rgb)
    segment_cases([cleaned], model, info, torch.device("cpu"))
    segment_cases([raw], model, dataclasses.replace(info, mask_cleanup="none"), torch.device("cpu"))
    assert (cleaned.mask != raw.mask).any()
    np.testing.assert_array_equal(cleaned.mask, clean_mask(raw.mask, "largest+fill_holes"))
    np.testing.assert_array_equal(raw.mask, cleaned.probability >= 0.5)
    bad = {"network_data_format": {"outputs": {"pred": {"mask_cleanup": "erode"}}}}
    with pytest.raises(ValueError, match="mask_cleanup"):
        read_model_info(json.dumps(bad), "m")


def test_segmentation_matches_the_model_called_directly(tiny_model_path):
    module, info = load_torchscript_model(tiny_model_path)
    images = [isic_rgb("ISIC_0000000", 64), isic_rgb("ISIC_0000001", None)[:300, :200].copy(), isic_rgb("ISIC_0000003", 80)]
    cases = [Case(source_file=f"{i}", rgb=im) for i, im in enumerate(images)]
    cases.insert(1, Case(source_file="bad", status="error", error="already failed"))
    segment_cases(cases, module, info, torch.device("cpu"), batch_size=2)
    assert cases[1].status == "error" and cases[1].probability is None
    for case in (c for c in cases if c.ok):
        with torch.inference_mode():
            logits = module(rgb_to_model_input(case.rgb)[None])
        probability = logits_to_probability(logits, case.rgb.shape[:2])
        assert case.probability.shape == case.rgb.shape[:2] and case.mask.shape == case.rgb.shape[:2]
        np.testing.assert_allclose(case.probability, probability[0, 0].numpy(), atol=1e-5)
        mismatch = case.mask != probability_to_mask(probability)[0, 0].numpy()
        assert (np.abs(probability[0, 0].numpy()[mismatch] - 0.5) < 1e-4).all()
        assert case.model == MODEL_INFO
        assert 0 < case.mask.mean() < 1  # the tiny model draws a real boundary


def test_segmentation_operator_alone(tiny_model_path, rgb):
    cases = [Case(source_file="a", rgb=rgb), Case(source_file="b", rgb=rgb[:50])]
    (batch,) = run_operator_alone(
        lambda app: LesionSegmentationOperator(app, model_path=tiny_model_path, batch_size=4, name="segment"), cases
    )
    assert [c.mask.shape for c in batch] == [(96, 96), (50, 96)] and batch.last
    assert all(c.flip_agreement is None for c in batch)


def test_flip_tta_averages_the_two_views_and_measures_their_agreement(tiny_model_path, rgb):
    module, info = load_torchscript_model(tiny_model_path)
    plain, flipped = Case(source_file="a", rgb=rgb), Case(source_file="a", rgb=rgb)
    segment_cases([plain], module, info, torch.device("cpu"))
    segment_cases([flipped], module, info, torch.device("cpu"), flip_tta=True)
    mirror = Case(source_file="m", rgb=np.ascontiguousarray(rgb[:, ::-1]))
    segment_cases([mirror], module, info, torch.device("cpu"))
    # the mean of the two views' logits, as the bundle's FlipAveragingInferer with flips [[], [3]] computes it
    model_input = rgb_to_model_input(rgb, info.input_size)[None]
    with torch.inference_mode():
        averaged = (module(model_input) + torch.flip(module(torch.flip(model_input, [3])), [3])) / 2
    expected = logits_to_probability(averaged, rgb.shape[:2])[0, 0].numpy()
    np.testing.assert_allclose(flipped.probability, expected, atol=1e-5)
    assert np.abs(flipped.probability - plain.probability).max() > 1e-4  # a random tiny model is not symmetric
    assert flipped.flip_agreement == pytest.approx(flip_agreement(plain.mask, mirror.mask[:, ::-1]), abs=0.01)
    assert case_confidence(flipped.probability, flipped.flip_agreement) == pytest.approx(
        lesion_confidence(flipped.probability) * flipped.flip_agreement)


# --------------------------------------------------------------------------------------------- confidence


def test_confidence_means_something():
    sharp = np.zeros((64, 64), np.float32)
    sharp[16:48, 16:48] = 0.99
    sharp[sharp == 0] = 0.01
    washed = np.full((64, 64), 0.02, np.float32)
    washed[8:56, 8:56] = np.linspace(0.3, 0.7, 48)[None, :]
    nothing = np.full((64, 64), 0.1, np.float32)
    c_sharp, c_washed, c_nothing = (lesion_confidence(p) for p in (sharp, washed, nothing))
    assert 0.95 < c_sharp <= 1.0
    assert c_washed < 0.3
    assert c_nothing == 0.0
    # a sharp mask running along the image border (a dermoscope's dark vignette) is not trusted either
    vignette = np.where(np.arange(64)[None, :] < 20, 0.99, 0.01).astype(np.float32).repeat(64, 0)
    assert lesion_confidence(vignette) < 0.6 * c_sharp
    assert route_for(c_sharp, 0.8) == "accepted" and route_for(c_washed, 0.8) == "review"
    assert route_for(0.8, 0.8) == "accepted"
    assert flip_agreement(sharp > 0.5, sharp > 0.5) == 1.0 and flip_agreement(sharp > 0.5, nothing > 0.5) == 0.0


def test_confidence_operator_alone():
    sharp = np.full((64, 64), 0.01, np.float32)
    sharp[16:48, 16:48] = 0.99
    cases = [Case(source_file="a", probability=sharp), Case(source_file="b", probability=np.full((8, 8), 0.5, np.float32))]
    (batch,) = run_operator_alone(lambda app: ConfidenceRoutingOperator(app, threshold=0.6, name="confidence"), cases)
    assert [c.route for c in batch] == ["accepted", "review"]
    assert all(0.0 <= c.confidence <= 1.0 for c in batch)


# --------------------------------------------------------------------------------------------- writers


def _segmented_case(rgb, tiny_model_path, **dataset_kwargs) -> Case:
    path_free = photo_dataset(rgb, **dataset_kwargs)
    del path_free.PixelData
    module, info = load_torchscript_model(tiny_model_path)
    case = Case(source_file="x.dcm", source=path_free, rgb=rgb)
    segment_cases([case], module, info, torch.device("cpu"))
    case.confidence = lesion_confidence(case.probability)
    return case


@pytest.mark.parametrize("pixel_spacing", [None, 0.02])
def test_binary_and_fractional_seg_are_valid_and_read_back(tmp_path, rgb, tiny_model_path, pixel_spacing):
    case = _segmented_case(rgb, tiny_model_path, pixel_spacing_mm=pixel_spacing, compression="jpeg")
    seg = build_binary_seg(case.source, case.mask, case.model)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = hd.seg.segread(path)
    assert back.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    mask = back.get_pixels_by_source_instance([case.sop_instance_uid], combine_segments=True)[0]
    np.testing.assert_array_equal(mask, case.mask)
    description = back.get_segment_description(1)
    assert description.segmented_property_type.value == "95324001"
    assert description.segmented_property_category.value == "49755003"
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert description.algorithm_identification[0].AlgorithmName == MODEL_INFO.name
    assert description.algorithm_identification[0].AlgorithmVersion == MODEL_INFO.version
    assert back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == case.sop_instance_uid
    assert back.PatientID == case.source.PatientID and back.StudyInstanceUID == case.source.StudyInstanceUID

    fractional = build_fractional_seg(case.source, case.probability, case.model)
    path = tmp_path / "seg_probability.dcm"
    fractional.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    probabilities = hd.seg.segread(path).get_pixels_by_source_instance([case.sop_instance_uid])[0, ..., 0]
    np.testing.assert_allclose(probabilities, case.probability, atol=1 / 255 + 1e-6)


def test_measurement_report_holds_area_and_confidence(tmp_path, rgb, tiny_model_path):
    case = _segmented_case(rgb, tiny_model_path, pixel_spacing_mm=0.05)
    seg = build_binary_seg(case.source, case.mask, case.model)
    area, unit = lesion_area(case.source, case.mask)
    assert unit == "mm2" and area == pytest.approx(case.mask.sum() * 0.05 * 0.05)
    sr = build_measurement_report(case.source, seg, case.model, area, unit, case.confidence)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    report = hd.sr.srread(path)
    (group,) = report.content.get_planar_roi_measurement_groups()
    values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
    assert values["42798000"] == (pytest.approx(area), "mm2")
    assert values["111012"] == (pytest.approx(case.confidence), "1")
    reference = group.reference_type  # the group points at the SEG's segment
    assert reference.value == "121214"  # Referenced Segmentation Frame
    assert seg.SOPInstanceUID in str(group)
    # without pixel spacing the area is in pixels
    no_spacing = _segmented_case(rgb, tiny_model_path)
    assert lesion_area(no_spacing.source, no_spacing.mask) == (float(no_spacing.mask.sum()), "px")


def test_overlay_png_and_secondary_capture(tmp_path, rgb, tiny_model_path):
    case = _segmented_case(rgb, tiny_model_path)
    overlay = overlay_rgb(case.rgb, case.mask)
    assert overlay.shape == rgb.shape and (overlay != rgb).any()
    far_from_lesion = ~ndimage.binary_dilation(case.mask > 0, iterations=2)
    np.testing.assert_array_equal(overlay[far_from_lesion], rgb[far_from_lesion])  # outside: the photo untouched
    inside = ndimage.binary_erosion(case.mask > 0, iterations=3)  # the lesion within its outline: tinted red
    assert inside.any()
    tinted = case.rgb[inside].astype(np.float32) * 0.65 + np.float32([0.35 * 255, 0, 0])
    np.testing.assert_array_equal(overlay[inside], np.clip(tinted + 0.5, 0, 255).astype(np.uint8))
    sc = build_overlay_sc(case.source, overlay, case.model)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    np.testing.assert_array_equal(back.pixel_array, overlay)
    assert back.BurnedInAnnotation == "YES" and back.StudyInstanceUID == case.source.StudyInstanceUID
    # the app never segments its own overlays again
    assert load_file(path, "sc.dcm").status == "skipped"


def test_the_overlay_outline_is_the_lesions_edge_wherever_the_lesion_lies():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 200, (600, 800, 3), dtype=np.uint8)  # no pure yellow in the photo
    original = photo.copy()
    thickness = 600 // 200  # the outline's width in pixels at this size
    for top, left, height, width in [(200, 300, 120, 160), (0, 0, 80, 800), (500, 760, 100, 40), (0, 0, 600, 800)]:
        mask = np.zeros((600, 800), bool)
        mask[top : top + height, left : left + width] = rng.random((height, width)) < 0.9  # ragged, with holes
        overlay = overlay_rgb(photo, mask)
        yellow = (overlay == [255, 255, 0]).all(axis=-1)
        expected = mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
        np.testing.assert_array_equal(yellow, expected)  # the border of the photo counts as outside the lesion
    np.testing.assert_array_equal(overlay_rgb(photo, np.zeros((600, 800), bool)), photo)  # no lesion: the photo
    np.testing.assert_array_equal(photo, original)  # drawn on a copy


def test_the_overlay_png_of_a_camera_photo_is_reduced_to_fit_a_screen(tmp_path):
    from operators.writers import OVERLAY_PNG_MAX_SIDE, write_png

    photo = np.random.default_rng(0).integers(0, 256, (2016, 3024, 3), dtype=np.uint8)
    write_png(photo, tmp_path / "full.png")
    write_png(photo, tmp_path / "reduced.png", max_side=OVERLAY_PNG_MAX_SIDE)
    write_png(photo[:500, :700], tmp_path / "small.png", max_side=OVERLAY_PNG_MAX_SIDE)
    with PIL.Image.open(tmp_path / "full.png") as full, PIL.Image.open(tmp_path / "reduced.png") as reduced:
        assert full.size == (3024, 2016) and reduced.size == (1512, 1008)
        # a 2x2 box average, not a subsampling
        expected = photo[:2, :2].reshape(-1, 3).mean(axis=0)
        assert np.abs(np.asarray(reduced)[0, 0] - expected).max() <= 1
    with PIL.Image.open(tmp_path / "small.png") as small:
        np.testing.assert_array_equal(np.asarray(small), photo[:500, :700])


def test_writer_operators_alone_write_atomically_inside_out(tmp_path, rgb, tiny_model_path):
    out = tmp_path / "out"
    out.mkdir()
    photo = tmp_path / "phone.png"
    PIL.Image.fromarray(rgb).save(photo)
    cases = [_segmented_case(rgb, tiny_model_path), load_file(photo, "phone.png")]
    module, info = load_torchscript_model(tiny_model_path)
    segment_cases(cases[1:], module, info, torch.device("cpu"))
    cases[1].confidence = 0.5
    cases.append(Case(source_file="broken.dcm", status="error", error="broken.dcm: loading failed: reasons"))

    emitted = run_operator_alone(
        lambda app: LesionSegWriterOperator(app, output_folder=out, name="w1"), cases, outputs=("cases", "segs")
    )
    (batch,), (segs,) = emitted["cases"], emitted["segs"]
    assert set(segs) == {c.sop_instance_uid for c in cases[:2]}  # the SEGs the SR will reference, by source
    (batch,) = run_operator_alone(
        lambda app: MeasurementReportWriterOperator(app, output_folder=out, name="w2"), list(batch), inputs={"segs": segs}
    )
    (batch,) = run_operator_alone(lambda app: OverlayWriterOperator(app, output_folder=out, name="w3"), list(batch))
    (batch,) = run_operator_alone(lambda app: ResultsWriterOperator(app, output_folder=out, name="w4"), list(batch))
    run_operator_alone(lambda app: ReleasePixelsOperator(app, name="w5"), list(batch), has_output=False)
    assert all(c.rgb is None and c.mask is None for c in batch)
    results = read_results(out)["cases"]
    assert [r["status"] for r in results] == ["ok", "ok", "error"]
    assert set(results[0]["outputs"]) == {"seg", "seg_probability", "sr", "overlay_png", "overlay_sc"}
    assert set(results[1]["outputs"]) == {"source", "seg", "seg_probability", "sr", "overlay_png", "overlay_sc"}
    for entry in results[:2]:
        for relative in entry["outputs"].values():
            path = (out / relative).resolve()
            assert path.is_file() and out.resolve() in path.parents
            assert relative.startswith(entry["source_sop_instance_uid"] + "/")
    assert results[2]["error"] == "broken.dcm: loading failed: reasons" and results[2]["outputs"] == {}
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]
    assert leftovers == []


def test_join_of_the_writer_branches_keeps_a_case_whole_or_without_outputs(tmp_path, rgb, tiny_model_path):
    out = tmp_path / "out"
    out.mkdir()
    cases = [_segmented_case(rgb, tiny_model_path), _segmented_case(rgb[::-1].copy(), tiny_model_path)]
    emitted = run_operator_alone(
        lambda app: LesionSegWriterOperator(app, output_folder=out, name="seg"), cases, outputs=("cases", "segs")
    )
    (batch,) = emitted["cases"]
    seg_files = [out / cases[1].outputs["seg"]]
    assert seg_files[0].is_file()
    batch[1].fail("writing the overlay", "disk full")  # the other branch failed this case after its SEG was written
    (joined,) = run_operator_alone(
        lambda app: JoinWritersOperator(app, output_folder=out, branches=("reports", "overlays"), name="join"),
        inputs={"reports": batch, "overlays": batch},
    )
    assert joined is batch
    assert not seg_files[0].exists() and batch[1].outputs == {} and not (out / cases[1].sop_instance_uid).exists()
    assert all((out / relative).is_file() for relative in batch[0].outputs.values())


def test_a_case_keeps_its_first_failure(rgb, tiny_model_path):
    # the writer branches run side by side: a branch that loses the pixels because the other failed the case must
    # not replace the cause with its own consequence
    case = _segmented_case(rgb, tiny_model_path)
    case.fail("writing the overlay", "disk full")
    case.fail("writing the DICOM-SEG", TypeError("'NoneType' object is not subscriptable"))
    assert case.error.endswith("writing the overlay failed: disk full") and case.mask is None


def test_results_are_read_back_against_their_schema(tmp_path):
    write_results(tmp_path, [case_entry(Case(source_file="a.dcm", status="error", error="a.dcm: loading failed: x"))])
    assert read_results(tmp_path)["cases"][0]["status"] == "error"
    (tmp_path / "results.json").write_text(json.dumps({"cases": [{"source_file": "a.dcm", "status": "done"}]}))
    with pytest.raises(ValueError, match=r"results.json does not match the results.json schema at cases/0"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text('{"cases": [')
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_results(tmp_path)


def test_output_names_come_from_valid_uids_only(tmp_path):
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.77.1.7")
    for bad in ("../1.2", "1.2/3", "", "1..2", "1.2.", "1" * 65, None, "1.2\x00"):
        assert not is_valid_uid(bad)
    source = Dataset()
    source.SOPInstanceUID = "../../escape"
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        case_output_dir(tmp_path, Case(source_file="x", source=source))
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    assert (tmp_path / "f.bin").read_bytes() == b"abc" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
