# Copyright (c) the dermseg contributors. Apache-2.0.
"""Corrections from the institution: PNG masks and DICOM-SEGs, good and bad files side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from monai_app.edge import EdgeStore
from monai_app.edge.__main__ import main as edge_cli
from monai_app.edge.corrections import import_corrections

from _edge_helpers import case_pixels, case_uids, record_test_case, write_dms, write_seg

ACCEPTED, PNG_CASE, SEG_CASE, UNTOUCHED = 0, 1, 2, 3


@pytest.fixture
def review_store(tmp_path):
    """A store with one accepted case and three waiting for review; returns (store folder, sources folder)."""
    store_dir, work = tmp_path / "store", tmp_path / "work"
    with EdgeStore(store_dir) as store:
        record_test_case(store, work, ACCEPTED, route="accepted")
        for index in (PNG_CASE, SEG_CASE, UNTOUCHED):
            record_test_case(store, work, index, route="review", with_seg=True)
    return store_dir, work


def corrected_mask(index: int) -> np.ndarray:
    """The reviewer's mask: the proposal with a band added, so it differs from what the model said."""
    mask = case_pixels(index)[1].copy()
    mask[:4] = 1
    return mask


def source_of(work: Path, index: int) -> Path:
    return work / f"{case_uids(index)[2]}.dcm"


def save_png(path: Path, mask: np.ndarray) -> None:
    PIL.Image.fromarray((mask > 0).astype(np.uint8) * 255).save(path)


def stored_label(store: EdgeStore, index: int) -> np.ndarray:
    from networks.preprocessing import read_mask

    return read_mask(store.get_case(case_uids(index)[2]).training_label)


def test_png_and_seg_corrections_close_their_reviews(review_store, tmp_path, capsys):
    store_dir, work = review_store
    folder = tmp_path / "returned"
    (folder / "slicer").mkdir(parents=True)  # viewers save in sub-folders
    save_png(folder / f"{case_uids(PNG_CASE)[2]}.png", corrected_mask(PNG_CASE))
    write_seg(folder / "slicer" / "Segmentation.dcm", source_of(work, SEG_CASE), corrected_mask(SEG_CASE))

    assert edge_cli(["--store", str(store_dir), "import-corrections", str(folder)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1]) == {"imported": 2, "unchanged": 0, "failed": 0}

    with EdgeStore(store_dir) as store:
        assert store.status() == {"accepted": 1, "review": 1, "corrected": 2, "model_version": None}
        for index in (PNG_CASE, SEG_CASE):
            case = store.get_case(case_uids(index)[2])
            assert case.state == "corrected" and case.route == "review" and case.corrected_at
            np.testing.assert_array_equal(stored_label(store, index), corrected_mask(index))
        assert "corrected_seg" in store.get_case(case_uids(SEG_CASE)[2]).files  # the reviewer's SEG is kept
        assert store.get_case(case_uids(SEG_CASE)[2]).correction_file == "Segmentation.dcm"
        datalist = store.write_datalist(tmp_path / "edge.json")
        labels = {s["sop_instance_uid"]: e["label"] for e, s in zip(datalist["training"], datalist["edge_samples"])}
        assert set(labels) == {case_uids(i)[2] for i in (ACCEPTED, PNG_CASE, SEG_CASE)}
        assert labels[case_uids(PNG_CASE)[2]].endswith("corrected_mask.png")

    # importing the same folder again changes nothing and is not an error
    assert edge_cli(["--store", str(store_dir), "import-corrections", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"imported": 0, "unchanged": 2, "failed": 0}


def test_seg_correction_takes_the_lesion_segment_not_the_others(review_store, tmp_path):
    store_dir, work = review_store
    folder = tmp_path / "returned"
    folder.mkdir()
    ruler = np.zeros_like(corrected_mask(SEG_CASE))
    ruler[-3:, :] = 1  # a second, non-lesion segment the reviewer also drew
    write_seg(folder / "two_segments.dcm", source_of(work, SEG_CASE), corrected_mask(SEG_CASE), extra_segment=ruler)
    with EdgeStore(store_dir) as store:
        report = import_corrections(store, folder)
        assert report.ok and len(report.imported) == 1
        np.testing.assert_array_equal(stored_label(store, SEG_CASE), corrected_mask(SEG_CASE))


def test_fractional_seg_correction_is_lesion_from_one_half(review_store, tmp_path):
    store_dir, work = review_store
    folder = tmp_path / "returned"
    folder.mkdir()
    probability = corrected_mask(SEG_CASE) * 0.8
    probability[0, :] = 0.3  # below one half: not lesion
    write_seg(folder / "fractional.dcm", source_of(work, SEG_CASE), probability, fractional=True)
    expected = corrected_mask(SEG_CASE)
    expected[0, :] = 0
    with EdgeStore(store_dir) as store:
        assert import_corrections(store, folder).ok
        np.testing.assert_array_equal(stored_label(store, SEG_CASE), expected)


def test_bad_corrections_are_named_and_the_good_ones_still_import(review_store, tmp_path, capsys):
    store_dir, work = review_store
    folder = tmp_path / "returned"
    folder.mkdir()
    good_png = folder / f"{case_uids(PNG_CASE)[2]}.png"
    save_png(good_png, corrected_mask(PNG_CASE))
    good_seg = folder / "good_seg.dcm"
    write_seg(good_seg, source_of(work, SEG_CASE), corrected_mask(SEG_CASE))

    expected = {}
    wrong_size = folder / f"{case_uids(UNTOUCHED)[2]}.png"
    save_png(wrong_size, np.ones((10, 10), np.uint8))
    expected[wrong_size.name] = "wrong size: the mask is 10x10"
    unknown_png = folder / "1.2.826.0.1.999.png"
    save_png(unknown_png, corrected_mask(PNG_CASE))
    expected[unknown_png.name] = "unknown UID 1.2.826.0.1.999"
    stranger = tmp_path / "stranger.dcm"  # an image this store never saw, and a SEG of it
    write_dms(stranger, case_pixels(99)[0], 99)
    unknown_seg = folder / "unknown_seg.dcm"
    write_seg(unknown_seg, stranger, case_pixels(99)[1])
    expected[unknown_seg.name] = f"unknown UID: the SEG references {case_uids(99)[2]}"
    not_a_seg = folder / "not_a_seg.dcm"
    shutil.copyfile(source_of(work, UNTOUCHED), not_a_seg)
    expected[not_a_seg.name] = "not a DICOM-SEG: SOP Class is Dermoscopic Photography Image Storage"
    garbage = folder / "notes.txt"
    garbage.write_text("looks fine to me")
    expected[garbage.name] = "neither a PNG mask named <SOPInstanceUID>.png nor a DICOM file"
    (folder / "again").mkdir()
    fake_png = folder / "again" / f"{case_uids(UNTOUCHED)[2]}.png"
    fake_png.write_bytes(b"GIF89a not a png")
    expected[fake_png.relative_to(folder)] = "not a PNG image"
    badly_named = folder / "case-three.png"
    save_png(badly_named, corrected_mask(UNTOUCHED))
    expected[badly_named.name] = "must be named <SOPInstanceUID>.png"
    accepted = folder / f"{case_uids(ACCEPTED)[2]}.png"
    save_png(accepted, case_pixels(ACCEPTED)[1])
    expected[accepted.name] = "is not waiting for review (accepted)"
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(good_seg.read_bytes()[:400])
    expected[truncated.name] = "damaged or truncated DICOM-SEG"

    assert edge_cli(["--store", str(store_dir), "import-corrections", str(folder)]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(expected)
    for name, problem in expected.items():
        line = next(line for line in errors if f"{folder / name}:" in line)
        assert problem in line, line
    assert json.loads(captured.out.strip().splitlines()[-1]) == {"imported": 2, "unchanged": 0, "failed": len(expected)}

    with EdgeStore(store_dir) as store:
        assert store.counts() == {"accepted": 1, "review": 1, "corrected": 2}
        assert store.get_case(case_uids(UNTOUCHED)[2]).state == "review"
        assert "corrected_mask" not in store.get_case(case_uids(UNTOUCHED)[2]).files
        assert store.verify() == []


def test_two_corrections_for_one_case_import_neither(review_store, tmp_path):
    store_dir, work = review_store
    folder = tmp_path / "returned"
    folder.mkdir()
    save_png(folder / f"{case_uids(SEG_CASE)[2]}.png", corrected_mask(SEG_CASE))
    write_seg(folder / "seg.dcm", source_of(work, SEG_CASE), np.zeros_like(corrected_mask(SEG_CASE)))
    with EdgeStore(store_dir) as store:
        report = import_corrections(store, folder)
        assert not report.imported and len(report.failed) == 2
        assert all("several corrections for case" in str(error) for error in report.failed)
        assert store.get_case(case_uids(SEG_CASE)[2]).state == "review"


def test_a_closed_review_refuses_a_different_correction(review_store, tmp_path):
    store_dir, _ = review_store
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    save_png(first / f"{case_uids(PNG_CASE)[2]}.png", corrected_mask(PNG_CASE))
    save_png(second / f"{case_uids(PNG_CASE)[2]}.png", np.zeros_like(corrected_mask(PNG_CASE)))
    with EdgeStore(store_dir) as store:
        assert import_corrections(store, first).ok
        report = import_corrections(store, second)
        assert [error.problem for error in report.failed] == [
            f"case {case_uids(PNG_CASE)[2]} is not waiting for review "
            f"(corrected from {case_uids(PNG_CASE)[2]}.png at {store.get_case(case_uids(PNG_CASE)[2]).corrected_at})"
        ]
        np.testing.assert_array_equal(stored_label(store, PNG_CASE), corrected_mask(PNG_CASE))


def test_an_ohif_style_seg_of_a_calibrated_photo_imports(review_store, tmp_path):
    """OHIF's SEG: one segment "Segment 1" (property Tissue), from a source with Pixel Spacing, so highdicom wrote
    Pixel Measures without a Slice Thickness (legal for a photograph)."""
    store_dir, work = review_store
    folder = tmp_path / "returned"
    folder.mkdir()
    calibrated = write_dms(tmp_path / "calibrated.dcm", case_pixels(SEG_CASE)[0], SEG_CASE, pixel_spacing=0.05)
    seg = write_seg(folder / "ohif.dcm", tmp_path / "calibrated.dcm", corrected_mask(SEG_CASE), label="Segment 1",
                    manufacturer="OHIF")
    (measures,) = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert "SliceThickness" not in measures and calibrated.SOPInstanceUID == case_uids(SEG_CASE)[2]
    with EdgeStore(store_dir) as store:
        report = import_corrections(store, folder)
        assert report.ok and len(report.imported) == 1, [str(e) for e in report.failed]
        np.testing.assert_array_equal(stored_label(store, SEG_CASE), corrected_mask(SEG_CASE))
