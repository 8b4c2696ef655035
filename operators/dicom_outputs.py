# Copyright (c) the dermseg contributors. Apache-2.0.
"""Building the result objects of one case with highdicom: SEG (binary, fractional), TID 1500 SR, overlay SC.

Plain functions of (source dataset, arrays, model info), so each object can be built and checked alone.
UIDs derive from the source's SOPInstanceUID and the model version: re-running a model on the same image gives
the same UIDs, so a PACS replaces rather than duplicates, and a new model version gives new objects.

A review case's BINARY SEG says so in its SeriesDescription (:data:`REVIEW_SERIES_DESCRIPTION`): the one place a
viewer's study browser shows for every series, so a reviewer finds the cases to check without our results.json.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Optional, Tuple

import highdicom as hd
import numpy as np
import PIL.Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from scipy import ndimage

from networks.preprocessing import mask_bounding_box

from .case import ModelInfo
from .conventions import MANUFACTURER

__all__ = [
    "MANUFACTURER",
    "SKIN_LESION",
    "REVIEW_SERIES_DESCRIPTION",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "CERTAINTY_OF_FINDING",
    "pixel_spacing_mm",
    "lesion_area",
    "build_binary_seg",
    "build_fractional_seg",
    "build_measurement_report",
    "overlay_rgb",
    "build_overlay_sc",
    "output_uid",
]

try:
    SOFTWARE_VERSION = _metadata.version("dermseg")
except _metadata.PackageNotFoundError:  # run from a source tree that was not pip-installed
    SOFTWARE_VERSION = "0.1.0"

SKIN_LESION = hd.sr.CodedConcept("95324001", "SCT", "Skin lesion")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
CERTAINTY_OF_FINDING = hd.sr.CodedConcept("111012", "DCM", "Certainty of Finding")
AREA = hd.sr.CodedConcept("42798000", "SCT", "Area")
UNIT_SQUARE_MM = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
UNIT_PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
UNIT_NONE = hd.sr.CodedConcept("1", "UCUM", "no units")
# Series numbers of the outputs, fixed so a viewer lists them in the same order for every study.
SERIES_NUMBER = {"seg": 901, "seg_probability": 902, "sr": 903, "overlay_sc": 904}
SERIES_DESCRIPTION = {"seg": "Skin lesion SEG", "seg_probability": "Skin lesion probability SEG"}
REVIEW_SERIES_DESCRIPTION = "Skin lesion SEG - NEEDS REVIEW"


def output_uid(source: Dataset, model: ModelInfo, kind: str, level: str = "instance") -> str:
    return generate_uid(entropy_srcs=[str(source.SOPInstanceUID), model.name, model.version, kind, level])


def pixel_spacing_mm(source: Dataset) -> Optional[Tuple[float, float]]:
    """(row, column) spacing in mm from PixelSpacing where the source has a usable one, else None."""
    spacing = source.get("PixelSpacing")
    try:
        row, column = (float(v) for v in spacing)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(row) and np.isfinite(column) and row > 0 and column > 0):
        return None
    return row, column


def lesion_area(source: Dataset, mask: np.ndarray) -> Tuple[float, str]:
    """Lesion area and its unit: mm2 where the source has pixel spacing, else a pixel count ("px")."""
    pixels = int(np.count_nonzero(mask))
    spacing = pixel_spacing_mm(source)
    if spacing is None:
        return float(pixels), "px"
    return pixels * spacing[0] * spacing[1], "mm2"


def _algorithm(model: ModelInfo) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name, version=model.version, family=codes.cid7162.ArtificialIntelligence
    )


def _segment(model: ModelInfo) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Skin lesion",
        segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=SKIN_LESION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(model),
    )


def _pixel_measures(source: Dataset) -> Optional[hd.PixelMeasuresSequence]:
    # segread cannot read back a SEG of a source with PixelSpacing unless the SEG has pixel measures with a
    # slice thickness (dicom3tools' segread, checked); a photograph has no thickness, 1 mm is a placeholder every
    # reader accepts.
    spacing = pixel_spacing_mm(source)
    return None if spacing is None else hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=1.0)


def _seg(source: Dataset, array: np.ndarray, model: ModelInfo, kind: str, segmentation_type) -> hd.seg.Segmentation:
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=array[None],  # one frame, one segment
        segmentation_type=segmentation_type,
        segment_descriptions=[_segment(model)],
        series_instance_uid=output_uid(source, model, kind, "series"),
        series_number=SERIES_NUMBER[kind],
        sop_instance_uid=output_uid(source, model, kind),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=SOFTWARE_VERSION,
        device_serial_number="1",
        content_label="LESION" if kind == "seg" else "LESIONPROB",
        content_description=f"Skin lesion segmentation by {model.name} {model.version}"[:64],
        pixel_measures=_pixel_measures(source),
        omit_empty_frames=False,  # an empty mask is a result too: no lesion found
    )
    if "PatientOrientation" in source:
        seg.PatientOrientation = source.PatientOrientation
    seg.SeriesDescription = SERIES_DESCRIPTION[kind]
    return seg


def build_binary_seg(source: Dataset, mask: np.ndarray, model: ModelInfo, needs_review: bool = False) -> hd.seg.Segmentation:
    """BINARY SEG of the lesion mask, explicit VR little endian (BINARY allows no lossy syntax); a case routed to
    review is marked in its SeriesDescription."""
    seg = _seg(source, (np.asarray(mask) > 0).astype(np.uint8), model, "seg", hd.seg.SegmentationTypeValues.BINARY)
    if needs_review:
        seg.SeriesDescription = REVIEW_SERIES_DESCRIPTION
    return seg


def build_fractional_seg(source: Dataset, probability: np.ndarray, model: ModelInfo) -> hd.seg.Segmentation:
    """FRACTIONAL (PROBABILITY) SEG of the lesion probabilities, 8 bits (max fractional value 255)."""
    return _seg(
        source, np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0), model, "seg_probability",
        hd.seg.SegmentationTypeValues.FRACTIONAL,
    )


def build_measurement_report(
    source: Dataset, seg: Dataset, model: ModelInfo, area: float, area_unit: str, confidence: float
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 measurement report: the lesion's area and the model's confidence, referencing the SEG segment."""
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    tracking = hd.sr.TrackingIdentifier(uid=output_uid(source, model, "sr", "tracking"), identifier="Skin lesion 1")
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=1,
            segment_number=1,
            source_image=hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID),
        ),
        finding_type=SKIN_LESION,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=AREA, value=float(area), unit=UNIT_SQUARE_MM if area_unit == "mm2" else UNIT_PIXELS,
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=float(confidence), unit=UNIT_NONE, algorithm_id=algorithm),
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=output_uid(source, model, "sr", "device"), name=model.name, manufacturer_name=MANUFACTURER,
        ),
    )
    dermoscopy = str(source.get("Modality", "")) == "DMS"
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.DermoscopicPhotography if dermoscopy else codes.SCT.PhotographyOfPatient,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, seg],
        content=report,
        series_instance_uid=output_uid(source, model, "sr", "series"),
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=output_uid(source, model, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    sr.SeriesDescription = "Skin lesion measurements"
    _reference_segment_not_frame(sr)
    return sr


def _reference_segment_not_frame(dataset: Dataset) -> None:
    """Keep only the segment number in a reference to a SEG.

    highdicom writes both ReferencedFrameNumber and ReferencedSegmentNumber; the Image SOP Instance Reference
    macro allows only one of them (dciodvfy: "shall not be present when ReferencedFrameNumber is present").
    The SEG has a single frame holding the single segment, so the segment number alone says the same.
    """
    for item in dataset.get("ContentSequence", []):
        for reference in item.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in reference and "ReferencedFrameNumber" in reference:
                del reference.ReferencedFrameNumber
        _reference_segment_not_frame(item)


def overlay_rgb(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """The photo with the lesion tinted red and its outline drawn in yellow, for people and for PACS viewers."""
    mask = np.asarray(mask) > 0
    out = PIL.Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    box = mask_bounding_box(mask)
    if box is None:
        return np.asarray(out)
    # Everything happens inside the lesion's bounding box (a fraction of a camera photo), with Pillow's table
    # look-up and masked pastes in C: indexing a camera photo's lesion pixels in numpy took twice as long.
    rows, columns = box
    region = (columns.start, rows.start, columns.stop, rows.stop)
    lesion = mask[box]
    out.paste(out.crop(region).point(_tint_table(alpha)), region, mask=PIL.Image.fromarray(lesion))
    thickness = max(1, min(mask.shape) // 200)  # visible at any photo size
    # beyond the box is background, as the erosion's border value says
    outline = lesion & ~ndimage.binary_erosion(lesion, iterations=thickness, border_value=0)
    out.paste((255, 255, 0), region, mask=PIL.Image.fromarray(outline))
    return np.asarray(out)


def _tint_table(alpha: float) -> list:
    """Each 8-bit value of R, G and B once tinted: ``value * (1 - alpha)``, plus ``alpha * 255`` in red, rounded."""
    values = np.arange(256, dtype=np.float32) * (1.0 - alpha)
    table = np.stack([values + alpha * 255.0, values, values])
    return np.clip(table + 0.5, 0, 255).astype(np.uint8).ravel().tolist()


def build_overlay_sc(source: Dataset, overlay: np.ndarray, model: ModelInfo) -> hd.sc.SCImage:
    """The overlay as an RGB Secondary Capture in the source's study, for viewers that cannot draw a SEG."""
    orientation = source.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(overlay),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        # highdicom wants an orientation for a PATIENT image; a photo rarely has one, so a placeholder goes in
        # and is replaced below by the source's own value (type 2: empty where the source has none)
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=output_uid(source, model, "overlay_sc", "series"),
        series_number=SERIES_NUMBER["overlay_sc"],
        sop_instance_uid=output_uid(source, model, "overlay_sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
    )
    sc.PatientOrientation = orientation if orientation is not None else ""
    sc.Laterality = source.get("Laterality", "")  # type 2C in General Series; empty when not a paired part
    sc.BurnedInAnnotation = "YES"  # it is the photo with the result drawn in; the loader skips these
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SeriesDescription = "Skin lesion overlay"
    sc.DerivationDescription = f"Lesion outline by {model.name} {model.version}"[:1024]
    return sc
