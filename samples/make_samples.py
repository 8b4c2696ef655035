#!/usr/bin/env python
# Copyright (c) the dermseg contributors. Apache-2.0 (the code; the images are ISIC's, CC BY-NC 4.0: see README).
"""Build the demo input in samples/: DICOM dermoscopy images from ISIC 2018 images, and a phone-style photo.

    .venv/bin/python samples/make_samples.py [--data /work/shared/data/isic2018_task1_512]

The patient and study data are invented (no ISIC image comes with any).  The DICOM builders here are also used by
the tests to make every kind of input the app reads.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Optional

import numpy as np
import PIL.Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MODALITY = {DERMOSCOPIC_PHOTOGRAPHY: "DMS", VL_PHOTOGRAPHIC: "XC", SECONDARY_CAPTURE: "OT"}

HERE = Path(__file__).resolve().parent
INPUT = HERE / "input"  # what the app reads; this script and the README stay outside it
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "isic2018_task1_512"  # ../shared beside the checkout
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root: fine for invented demo data


def jpeg_baseline_422(rgb: np.ndarray, quality: int = 90) -> bytes:
    """A JPEG baseline stream with 4:2:2 chroma subsampling (DICOM's YBR_FULL_422)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, subsampling=1)  # 1 = 4:2:2
    return buffer.getvalue()


def photo_dataset(
    rgb: np.ndarray,
    *,
    sop_class_uid: str = DERMOSCOPIC_PHOTOGRAPHY,
    compression: str = "none",  # "none" | "jpeg" | "ybr-header-rgb-bytes"
    patient: Optional[dict] = None,
    study_instance_uid: Optional[str] = None,
    series_instance_uid: Optional[str] = None,
    sop_instance_uid: Optional[str] = None,
    instance_number: int = 1,
    pixel_spacing_mm: Optional[float] = None,
    seed: Optional[str] = None,
) -> Dataset:
    """A single-frame photograph as a DICOM dataset (DMS, XC or SC), uncompressed RGB or JPEG YBR_FULL_422.

    ``ybr-header-rgb-bytes`` writes uncompressed RGB bytes under a YBR_FULL_422 header, as some real files do.
    ``seed`` makes the UIDs reproducible.
    """
    patient = dict(patient or {})
    entropy = None if seed is None else [seed]

    def uid(kind):
        return generate_uid(UID_ROOT, entropy_srcs=None if entropy is None else entropy + [kind])

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or uid("instance")
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compression == "jpeg" else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_instance_uid or uid("study")
    ds.SeriesInstanceUID = series_instance_uid or uid("series")
    ds.PatientName = patient.get("PatientName", "Doe^Jane")
    ds.PatientID = patient.get("PatientID", "DERM-0001")
    ds.PatientBirthDate = patient.get("PatientBirthDate", "19700101")
    ds.PatientSex = patient.get("PatientSex", "F")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = patient.get("StudyDate", "20240315")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = patient.get("StudyTime", "101500")
    ds.StudyID = patient.get("StudyID", "1")
    ds.AccessionNumber = patient.get("AccessionNumber", "ACC0001")
    ds.ReferringPhysicianName = patient.get("ReferringPhysicianName", "")
    ds.StudyDescription = patient.get("StudyDescription", "Dermoscopy")
    ds.Modality = MODALITY.get(sop_class_uid, "OT")
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "Demo Dermoscope Co."
    ds.ManufacturerModelName = "DemoScope 1"
    ds.DeviceSerialNumber = "DS-0001"
    ds.SoftwareVersions = "1.0"
    ds.PatientOrientation = ""
    ds.Laterality = ""
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if sop_class_uid == SECONDARY_CAPTURE:
        ds.ConversionType = "DI"
    else:
        ds.AcquisitionContextSequence = []
    if sop_class_uid == DERMOSCOPIC_PHOTOGRAPHY:
        # Supplement 221's Dermoscopic Image module (type 2: empty where the dermoscope does not say)
        ds.FrameOfReferenceUID = uid("frame-of-reference")
        ds.PositionReferenceIndicator = ""
        ds.RecognizableVisualFeatures = "NO"
        ds.LightSourcePolarization = ""
        ds.EmitterColorTemperature = ""
        ds.ContactMethod = ""
        ds.OpticalMagnificationFactor = ""
    if pixel_spacing_mm:
        ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if compression == "jpeg":
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([jpeg_baseline_422(rgb)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif compression == "ybr-header-rgb-bytes":
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = rgb.tobytes()
    elif compression == "none":
        ds.LossyImageCompression = "00"
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = rgb.tobytes()
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def isic_rgb(name: str, data: Path = DEFAULT_DATA, size: Optional[int] = None) -> np.ndarray:
    with PIL.Image.open(Path(data) / "ISIC2018_Task1-2_Training_Input" / f"{name}.jpg") as im:
        im = im.convert("RGB")
        if size:
            im = im.resize((size, size), PIL.Image.BILINEAR)
        return np.array(im)


# The demo set: (ISIC image, file, how it is stored, invented patient)
DEMO = [
    ("ISIC_0000000", "study-1001/dermoscopy/IM0001.dcm", "jpeg",
     {"PatientName": "Moreau^Claire", "PatientID": "DERM-1001", "PatientBirthDate": "19680412", "PatientSex": "F",
      "AccessionNumber": "ACC1001", "StudyID": "1001"}),
    ("ISIC_0000001", "study-1001/dermoscopy/IM0002.dcm", "jpeg", None),  # a second photo in the same series
    ("ISIC_0000003", "study-1002/IM0001.dcm", "none",
     {"PatientName": "Okafor^Daniel", "PatientID": "DERM-1002", "PatientBirthDate": "19811130", "PatientSex": "M",
      "AccessionNumber": "ACC1002", "StudyID": "1002"}),
]
PHONE_PHOTO = ("ISIC_0000004", "phone/IMG_20240402_0932.jpg")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=INPUT)
    args = parser.parse_args(argv)

    series_seed = {}
    for index, (name, relpath, compression, patient) in enumerate(DEMO, start=1):
        study_key = relpath.split("/")[0]
        if patient is not None:
            series_seed[study_key] = patient
        patient = series_seed[study_key]
        ds = photo_dataset(
            isic_rgb(name, args.data), compression=compression, patient=patient, seed=f"dermseg-demo-{relpath}",
            study_instance_uid=generate_uid(UID_ROOT, entropy_srcs=["dermseg-demo", study_key, "study"]),
            series_instance_uid=generate_uid(UID_ROOT, entropy_srcs=["dermseg-demo", study_key, "series"]),
            instance_number=int(relpath[-5]),
            pixel_spacing_mm=0.02 if compression == "none" else None,  # a calibrated dermoscope reports it
        )
        print("wrote", save(ds, args.out / relpath))
    name, relpath = PHONE_PHOTO
    # A phone photo: off-square, smaller, no DICOM at all
    photo = PIL.Image.fromarray(isic_rgb(name, args.data)).resize((480, 360), PIL.Image.BILINEAR)
    target = args.out / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    photo.save(target, format="JPEG", quality=85)
    print("wrote", target)


if __name__ == "__main__":
    main()
