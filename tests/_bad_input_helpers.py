# Copyright (c) the dermseg contributors. Apache-2.0.
"""Bad and odd input files for the app, each a real file built here, and what the app must say about each.

``build_bad_inputs(folder)`` writes every kind into ``folder`` (plus two good files) and returns the list of
:class:`Expect` (one per file that must get a results.json entry); tests/test_bad_input.py runs the app once over
the folder and checks each entry.  benchmarks/fuzz_loader.py reuses the seed builders.
"""

from __future__ import annotations

import copy
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import PIL.Image
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from _app_helpers import (
    SECONDARY_CAPTURE,
    VL_PHOTOGRAPHIC,
    isic_rgb,
    non_photo_dicom,
    photo_dataset,
    save_dicom,
)

MAX_PIXELS_TEXT = "50000000"  # operators.loader.MAX_PIXELS as the messages print it
# Patient data that must never reach a log line at the default level
SECRET_NAME = "Zyxwvut^Quokka"
SECRET_ID = "PID-Q9X7Z3"
SECRET_NAME_NO_CARET = "Quokkaly Wvutzyx"  # highdicom warns about a name without '^', quoting it
SECRET_BIRTH_DATE = "17.08.1945"  # malformed: pydicom and highdicom would quote it
UNREADABLE = "unreadable.dcm"
SECRETS = ("Zyxwvut", "Quokka", SECRET_ID, "Wvutzyx", SECRET_BIRTH_DATE, "1945")


@dataclass
class Expect:
    """What results.json must say about one input file."""

    name: str  # path relative to IN, as results.json names it
    status: str  # ok | error | skipped
    words: Tuple[str, ...] = ()  # each must appear in the entry's error message
    shape: Optional[Tuple[int, int]] = None  # ok cases: the (rows, columns) the SEG must have
    rgb: Optional[np.ndarray] = None  # ok cases: the pixels the app must have segmented (checked in source/overlay)
    patient_name: Optional[str] = None  # ok cases: the PatientName the SEG must carry


def rgb_image(size: int = 48, name: str = "ISIC_0000000") -> np.ndarray:
    return isic_rgb(name, size)


def dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_bytes_as_is(ds) -> bytes:
    """The file pydicom would refuse to write: the file meta as given, the data set in explicit VR little endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = DicomBytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = copy.copy(ds)
    del body.file_meta
    buffer = io.BytesIO()
    body.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return meta.getvalue() + buffer.getvalue()


def deflate_bomb(path: Path, ds, inflated_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian file whose data set inflates to ``inflated_bytes`` (a private OB
    element of zeros after the pixels): a few hundred kB on disk."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = dicom_bytes_as_is(ds)
    meta_length = 132 + 12 + struct.unpack("<I", head[140:144])[0]  # preamble, DICM, (0002,0000) element, group
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(head[meta_length:])]
    parts.append(compressor.compress(struct.pack("<HH2sHI", 0x7FE1, 0x0010, b"OB", 0, inflated_bytes)))
    zeros = bytes(2**20)
    parts += [compressor.compress(zeros) for _ in range(inflated_bytes // len(zeros))]
    parts.append(compressor.flush())
    path.write_bytes(head[:meta_length] + b"".join(parts))
    return path


def jpeg_bytes(rgb: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def patch_jpeg_size(jpeg: bytes, height: int, width: int) -> bytes:
    """A JPEG stream whose SOF marker declares ``height`` x ``width``: a decompression bomb in a few bytes."""
    data = bytearray(jpeg)
    offset = 2
    while offset < len(data):
        marker, length = data[offset : offset + 2], struct.unpack(">H", data[offset + 2 : offset + 4])[0]
        if marker[1] in (0xC0, 0xC1, 0xC2):
            data[offset + 5 : offset + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        offset += 2 + length
    raise ValueError("no SOF marker")


def constant_png(path: Path, width: int, height: int, value: int = 128) -> Path:
    """A huge RGB PNG of one colour, written row by row: a few hundred kB on disk, no large array in memory."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" + bytes([value]) * (3 * width)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)] + [compressor.flush()]
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", b"".join(parts)))
        f.write(chunk(b"IEND", b""))
    return path


def exif_rotated_jpeg(path: Path, rgb: np.ndarray, orientation: int = 6) -> Path:
    """A JPEG stored sideways with an EXIF Orientation tag (6: rotate 90 degrees clockwise to view)."""
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    PIL.Image.fromarray(rgb).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def _set_raw(ds, keyword: str, value: bytes) -> None:
    """Put raw bytes in a text element, as a device with another character set would have written them."""
    element = ds[keyword]
    ds[keyword] = pydicom.dataelem.RawDataElement(element.tag, element.VR, len(value), value, 0, False, True)


# ---------------------------------------------------------------------------------------------------------------


def build_bad_inputs(folder: Optional[Path]) -> List[Expect]:  # noqa: C901 (a list of cases, one block each)
    """Write every kind of bad or odd input (and two good files) under ``folder``; return what each must give.

    With ``folder=None`` nothing is written: the list alone, for parametrising tests at collection time.
    """
    write = folder is not None
    folder = Path(folder) if write else Path("/nonexistent")
    if write:
        folder.mkdir(parents=True, exist_ok=True)
    rgb = rgb_image(48)
    expects: List[Expect] = []

    def dcm(name: str, ds, status: str, *words: str, **kw) -> None:
        if write:
            save_dicom(ds, folder / name)
        expects.append(Expect(name, status, tuple(words), **kw))

    def raw(name: str, data: bytes, status: str, *words: str, **kw) -> None:
        if write:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        expects.append(Expect(name, status, tuple(words), **kw))

    def special(name: str, make, status: str, *words: str, **kw) -> None:
        """A file only ``make(path)`` can make (a FIFO, a link, a sparse or streamed file)."""
        if write:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            make(folder / name)
        expects.append(Expect(name, status, tuple(words), **kw))

    # -- good files in the same batch: the batch goes on around the bad ones
    secret = {"PatientName": SECRET_NAME, "PatientID": SECRET_ID, "PatientBirthDate": "19450817"}
    dcm("good/raw.dcm", photo_dataset(rgb, patient=secret), "ok", shape=rgb.shape[:2], rgb=rgb,
        patient_name=SECRET_NAME)
    good_photo = rgb_image(40, "ISIC_0000001")
    raw("good/photo.png", png_bytes(PIL.Image.fromarray(good_photo)), "ok", shape=(40, 40), rgb=good_photo)
    good_dicom = dicom_bytes(photo_dataset(rgb))

    # -- not DICOM, empty, truncated, header only, junk after the DICM prefix
    raw("not_dicom.txt", b"Patient list, do not process\n" * 20, "skipped", "neither a DICOM file nor a photo")
    raw("empty.dcm", b"", "error", "empty file")
    raw("truncated.dcm", good_dicom[: len(good_dicom) // 2], "error", "loading failed")
    meta_end = good_dicom.index(b"\x08\x00\x05\x00")  # the first data set element after the file meta
    raw("header_only.dcm", good_dicom[:meta_end], "error", "no SOPClassUID")
    raw("dicm_then_random.dcm", b"\x00" * 128 + b"DICM" + np.random.default_rng(1).bytes(4000), "error",
        "loading failed")
    raw("preamble_only.dcm", b"\x00" * 128 + b"DICM", "error", "loading failed")
    raw("no_preamble.dcm", good_dicom[132:], "skipped", "neither a DICOM file nor a photo")

    # -- pixel data missing, short, empty or huge
    ds = photo_dataset(rgb)
    del ds.PixelData
    dcm("no_pixeldata.dcm", ds, "error", "no PixelData")
    ds = photo_dataset(rgb)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    dcm("short_pixeldata.dcm", ds, "error", "PixelData holds")
    ds = photo_dataset(rgb)
    ds.Rows = 0
    dcm("rows_zero.dcm", ds, "error", "empty image")
    ds = photo_dataset(rgb)
    ds.Columns = 0
    dcm("columns_zero.dcm", ds, "error", "empty image")
    ds = photo_dataset(rgb)
    ds.Rows = ds.Columns = 65535  # 4.3 gigapixels declared over 7 kB of pixel data
    dcm("huge_declared.dcm", ds, "error", MAX_PIXELS_TEXT)
    ds = photo_dataset(rgb, compression="jpeg")
    ds.Rows = ds.Columns = 60000
    dcm("huge_declared_jpeg.dcm", ds, "error", MAX_PIXELS_TEXT)
    ds = photo_dataset(rgb, compression="jpeg")  # the header is honest, the JPEG stream inside declares 12000^2
    ds.PixelData = encapsulate([patch_jpeg_size(jpeg_bytes(rgb, subsampling=1), 12000, 12000)])
    dcm("jpeg_stream_bomb.dcm", ds, "error", "12000 x 12000", "48 x 48")
    special("deflate_bomb.dcm", lambda p: deflate_bomb(p, photo_dataset(rgb), 200 * 2**20), "error", "Deflated")

    def sparse(path):  # 200 MB + 1 byte declared, nothing on disk
        with open(path, "wb") as f:
            f.write(good_dicom)
            f.truncate(200_000_001)

    special("huge_file.dcm", sparse, "error", "200000001 bytes", "more than the")
    ds = photo_dataset(rgb)
    ds.NumberOfFrames = 2
    dcm("two_frames.dcm", ds, "error", "2 frames")

    # -- not photographs
    special("other/ct.dcm", lambda p: non_photo_dicom(p, "1.2.840.10008.5.1.4.1.1.2", "CT"), "skipped",
            "CT Image Storage")
    special("other/sr.dcm", lambda p: non_photo_dicom(p, "1.2.840.10008.5.1.4.1.1.88.33", "SR"), "skipped",
            "Comprehensive SR")
    special("other/mr.dcm", lambda p: non_photo_dicom(p, "1.2.840.10008.5.1.4.1.1.4", "MR"), "skipped",
            "MR Image Storage")
    ds = photo_dataset(rgb, sop_class_uid=SECONDARY_CAPTURE)
    ds.BurnedInAnnotation = "YES"
    dcm("other/overlay_sc.dcm", ds, "skipped", "burned-in annotation")
    ds = photo_dataset(rgb)
    del ds.SOPClassUID
    dcm("no_sop_class.dcm", ds, "error", "no SOPClassUID")

    # -- colour models and bit depths
    grey = rgb[..., 1].copy()
    ds = photo_dataset(rgb)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelData = 1, "MONOCHROME2", grey.tobytes()
    del ds.PlanarConfiguration
    dcm("monochrome2.dcm", ds, "ok", shape=grey.shape, rgb=np.repeat(grey[..., None], 3, -1))
    ds = photo_dataset(rgb)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelData = 1, "MONOCHROME1", grey.tobytes()
    del ds.PlanarConfiguration
    dcm("monochrome1.dcm", ds, "ok", shape=grey.shape, rgb=np.repeat(255 - grey[..., None], 3, -1))
    ds = photo_dataset(rgb)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = (rgb.astype(np.uint16) * 257).tobytes()
    dcm("rgb_16bit.dcm", ds, "error", "BitsAllocated 16")
    ds = photo_dataset(rgb)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
    del ds.PlanarConfiguration
    ds.PixelData = grey.tobytes()
    ds.RedPaletteColorLookupTableDescriptor = ds.GreenPaletteColorLookupTableDescriptor = \
        ds.BluePaletteColorLookupTableDescriptor = [256, 0, 16]
    ramp = (np.arange(256, dtype=np.uint16) * 257).tobytes()
    ds.RedPaletteColorLookupTableData = ds.GreenPaletteColorLookupTableData = ds.BluePaletteColorLookupTableData = ramp
    dcm("palette.dcm", ds, "error", "PALETTE COLOR")
    ds = photo_dataset(rgb)
    ds.SamplesPerPixel = 4
    dcm("four_samples.dcm", ds, "error", "SamplesPerPixel 4")
    ds = photo_dataset(rgb)
    del ds.PhotometricInterpretation
    dcm("no_photometric.dcm", ds, "error", "PhotometricInterpretation")
    ds = photo_dataset(rgb, compression="ybr-header-rgb-bytes")  # planar RGB bytes under a YBR_FULL_422 header
    ds.PlanarConfiguration = 1
    ds.PixelData = np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()
    dcm("ybr_header_planar_rgb_bytes.dcm", ds, "ok", shape=rgb.shape[:2], rgb=rgb)
    ds = photo_dataset(rgb, compression="jpeg")
    stream = jpeg_bytes(rgb, subsampling=1)
    ds.PixelData = encapsulate([stream[: len(stream) // 2]])
    dcm("jpeg_truncated_stream.dcm", ds, "error", "loading failed")
    ds = photo_dataset(rgb, compression="jpeg")
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 this is no JPEG at all" * 10])
    dcm("jpeg_garbage_stream.dcm", ds, "error", "loading failed")
    ds = photo_dataset(rgb)  # says JPEG, holds native bytes
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = rgb.tobytes()
    raw("jpeg_syntax_native_bytes.dcm", dicom_bytes_as_is(ds), "error", "loading failed")

    # -- UIDs: invalid, or trying to name a path outside OUT
    for name, keyword, value in [
        ("uid_letters.dcm", "SOPInstanceUID", "1.2.abc.4"),
        ("uid_dotdot.dcm", "SOPInstanceUID", "../../x"),
        ("uid_inner_dotdot.dcm", "SOPInstanceUID", "1.2/../3"),
        ("uid_absolute.dcm", "SOPInstanceUID", "/tmp/dermseg-escape"),
        ("uid_overlong.dcm", "SOPInstanceUID", "1." + "2" * 80),
        ("uid_empty.dcm", "SOPInstanceUID", ""),
        ("study_uid_dotdot.dcm", "StudyInstanceUID", "../../study"),
        ("series_uid_backslash.dcm", "SeriesInstanceUID", "1.2\\..\\3"),
    ]:
        ds = photo_dataset(rgb)
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"  # the meta is not what names the output
        raw(name, dicom_bytes_as_is(ds), "error", keyword, "not a valid DICOM UID")

    # -- patient names beyond ASCII, with and without SpecificCharacterSet
    ds = photo_dataset(rgb, patient={"PatientName": "Çelik^Zoë"})
    dcm("name_utf8.dcm", ds, "ok", shape=rgb.shape[:2], patient_name="Çelik^Zoë")
    ds = photo_dataset(rgb, patient={"PatientName": "Müller^Jürgen"})
    ds.SpecificCharacterSet = "ISO_IR 100"
    dcm("name_latin1.dcm", ds, "ok", shape=rgb.shape[:2], patient_name="Müller^Jürgen")
    ds = photo_dataset(rgb, patient={"PatientName": "山田^太郎"})
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    dcm("name_iso2022_japanese.dcm", ds, "ok", shape=rgb.shape[:2], patient_name="山田^太郎")
    ds = photo_dataset(rgb)
    del ds.SpecificCharacterSet  # default repertoire declared, UTF-8 bytes held
    _set_raw(ds, "PatientName", "Łukasz^Óscar".encode("utf-8"))
    dcm("name_utf8_without_charset.dcm", ds, "ok", shape=rgb.shape[:2])
    ds = photo_dataset(rgb)
    del ds.SpecificCharacterSet
    _set_raw(ds, "PatientName", "Gärtner^Åsa".encode("latin-1"))
    dcm("name_latin1_without_charset.dcm", ds, "ok", shape=rgb.shape[:2])
    ds = photo_dataset(rgb)
    ds.SpecificCharacterSet = "ISO_IR 999"  # a character set no one knows
    _set_raw(ds, "PatientName", "Ørsted^Hé".encode("utf-8"))
    dcm("name_unknown_charset.dcm", ds, "ok", shape=rgb.shape[:2])

    # -- other odd header values a device may write
    ds = photo_dataset(rgb)
    ds.PatientSex, ds.PatientBirthDate, ds.StudyDate, ds.StudyTime = "unknown", "1970-01-01", "15.03.2024", "10:15"
    dcm("odd_type2_values.dcm", ds, "ok", shape=rgb.shape[:2])
    ds = photo_dataset(rgb)
    ds.PixelSpacing = [0.02]  # one value where two belong
    dcm("pixel_spacing_one_value.dcm", ds, "ok", shape=rgb.shape[:2])
    ds = photo_dataset(rgb)
    ds.PixelSpacing = [-0.02, 0]
    dcm("pixel_spacing_negative.dcm", ds, "ok", shape=rgb.shape[:2])
    ds = photo_dataset(rgb, patient={"PatientName": SECRET_NAME_NO_CARET, "PatientID": SECRET_ID})
    ds.PatientBirthDate = SECRET_BIRTH_DATE
    dcm("secret_odd_values.dcm", ds, "ok", shape=rgb.shape[:2], patient_name=SECRET_NAME_NO_CARET)

    # -- the same image twice
    twin = photo_dataset(rgb, sop_instance_uid="1.2.826.0.1.3680043.8.498.424242")
    dcm("dup_a.dcm", twin, "ok", shape=rgb.shape[:2])
    dcm("dup_b.dcm", twin, "error", "duplicate SOPInstanceUID", "dup_a.dcm")

    # -- files that cannot be read: a FIFO (never opened: it would block), links into nothing or into a loop
    special("fifo.dcm", os.mkfifo, "error", "not a regular file")
    special("dangling_link.dcm", lambda p: os.symlink(p.with_name("nowhere.dcm"), p), "error", "No such file")
    special("loop_a.dcm", lambda p: os.symlink(p.with_name("loop_b.dcm"), p), "error", "symbolic links")
    special("loop_b.dcm", lambda p: os.symlink(p.with_name("loop_a.dcm"), p), "error", "symbolic links")
    if write:
        (folder / "subdir").mkdir()
        os.symlink("..", folder / "subdir" / "back_up")  # a folder loop: never walked into, never an entry
        (folder / "folder_named.dcm").mkdir()  # a folder named like a file: walked, holds nothing

    def unreadable(path):  # no permission to read (as root only where the app runs without CAP_DAC_OVERRIDE)
        path.write_bytes(good_dicom)
        path.chmod(0)

    special(UNREADABLE, unreadable, "error", "Permission denied")

    # -- plain photos: alpha, grey, 16-bit, palette, CMYK, rotated, tiny, huge, truncated, bombs
    photo = rgb_image(36, "ISIC_0000003")
    rgba = np.dstack([photo, np.full(photo.shape[:2], 100, np.uint8)])
    raw("photos/rgba.png", png_bytes(PIL.Image.fromarray(rgba, "RGBA")), "ok", shape=(36, 36), rgb=photo)
    grey = photo[..., 0].copy()
    raw("photos/grey.png", png_bytes(PIL.Image.fromarray(grey, "L")), "ok", shape=(36, 36),
        rgb=np.repeat(grey[..., None], 3, -1))
    grey16 = (grey.astype(np.uint16) << 8) | 0x5A
    raw("photos/grey16.png", png_bytes(PIL.Image.fromarray(grey16.astype(np.uint16))), "ok", shape=(36, 36),
        rgb=np.repeat(grey[..., None], 3, -1))
    la = PIL.Image.merge("LA", [PIL.Image.fromarray(grey), PIL.Image.fromarray(np.full_like(grey, 7))])
    raw("photos/grey_alpha.png", png_bytes(la), "ok", shape=(36, 36), rgb=np.repeat(grey[..., None], 3, -1))
    palette = PIL.Image.fromarray(photo).quantize(16)
    raw("photos/palette.png", png_bytes(palette), "ok", shape=(36, 36), rgb=np.asarray(palette.convert("RGB")))
    cmyk = io.BytesIO()
    PIL.Image.fromarray(photo).convert("CMYK").save(cmyk, format="JPEG", quality=95)
    raw("photos/cmyk.jpg", cmyk.getvalue(), "ok", shape=(36, 36))
    sideways = rgb_image(64, "ISIC_0000004")[:, :40]  # stored 64 rows x 40 columns, viewed 40 x 64
    special("photos/exif_rotated.jpg", lambda p: exif_rotated_jpeg(p, sideways), "ok", shape=(40, 64),
            rgb=np.ascontiguousarray(np.rot90(sideways, -1)))
    tiny = rgb_image(8, "ISIC_0000006")
    raw("photos/tiny_8x8.png", png_bytes(PIL.Image.fromarray(tiny)), "ok", shape=(8, 8), rgb=tiny)
    raw("photos/one_pixel.png", png_bytes(PIL.Image.new("RGB", (1, 1), (200, 120, 90))), "ok", shape=(1, 1))
    special("photos/huge_10000x10000.png", lambda p: constant_png(p, 10000, 10000), "error", "10000 x 10000",
            MAX_PIXELS_TEXT)
    raw("photos/jpeg_bomb.jpg", patch_jpeg_size(jpeg_bytes(photo), 65000, 65000), "error", "loading failed")
    raw("photos/jpeg_bomb_below_pillow_limit.jpg", patch_jpeg_size(jpeg_bytes(photo), 9000, 9000), "error",
        "9000 x 9000", MAX_PIXELS_TEXT)
    whole = jpeg_bytes(photo)
    raw("photos/truncated.jpg", whole[: len(whole) // 2], "error", "loading failed")
    raw("photos/png_bad_crc.png", _break_png_crc(png_bytes(PIL.Image.fromarray(photo))), "error", "loading failed")
    raw("photos/jpeg_named.dcm", jpeg_bytes(photo), "ok", shape=(36, 36))
    raw("photos/header_only.png", png_bytes(PIL.Image.fromarray(photo))[:33], "error", "not a readable PNG image")
    raw("photos/text_named.jpg", b"not a photo at all\n", "error", "not a readable JPG image")
    return expects


def _break_png_crc(data: bytes) -> bytes:
    data = bytearray(data)
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # a byte inside the compressed pixel data: its CRC no longer matches
    return bytes(data)


def expected_entries(expects: List[Expect]) -> dict:
    return {e.name: e for e in expects}


def tree(root: Path) -> dict:
    """Every path under ``root`` (links not followed) with its size and mtime: a before/after fingerprint."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            result[path.relative_to(root).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return result


def partial_files(out: Path) -> list:
    """Temporary or partial files the app must never leave in OUT."""
    return sorted(
        p.relative_to(out).as_posix()
        for p in Path(out).rglob("*")
        if p.suffix == ".part" or p.name.startswith((".write-test-", ".tmp")) or p.name.endswith("~")
    )


