# Copyright (c) the dermseg contributors. Apache-2.0.
"""Loader operator: every photograph under the input folder becomes a :class:`~operators.case.Case`.

Why not the SDK's ``DICOMDataLoaderOperator`` -> ``DICOMSeriesSelectorOperator`` ->
``DICOMSeriesToVolumeOperator`` chain: the volume operator fails on a series of several photos (no
ImagePositionPatient), the chain reads no plain JPEG/PNG photos, and one unreadable file must become one
``error`` entry rather than the end of the batch.  So this one operator walks the folder itself, one file at a
time, each file inside its own error boundary, and emits the cases in chunks so memory stays flat on long runs.

This module walks the folder and dispatches; what a file holds is read by the input kinds in
``operators.inputs`` (one module each), tried in the order of ``INPUT_KINDS``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .case import Case, CaseBatch
from .conventions import PHOTO_SOP_CLASSES, CaseStatus
from .inputs import dicom_photo, plain_photo
from .inputs.common import MAX_FILE_BYTES, MAX_PIXELS, SkippedInput
from .inputs.dicom_photo import dicom_to_rgb
from .inputs.plain_photo import is_sidecar, wrap_photo_as_dicom

__all__ = [
    "SkinPhotoLoaderOperator",
    "PHOTO_SOP_CLASSES",
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "INPUT_KINDS",
    "InputKind",
    "load_file",
    "iter_input_files",
    "dicom_to_rgb",
    "wrap_photo_as_dicom",
    "SkippedInput",
]


class InputKind(NamedTuple):
    """One kind of input file: how a skipped file's message names it, and its reader, which returns the case or
    ``None`` when the file is not of this kind."""

    description: str
    try_load: Callable[[Path, str], Optional[Case]]


# Tried in this order; the first that recognises the file reads it.  DICOM first: a DICOM file is recognised by
# its content whatever its name, and is read as DICOM even where its preamble also makes it a valid TIFF.
INPUT_KINDS = (
    InputKind("a DICOM file", dicom_photo.try_load),
    InputKind("a photo (JPEG, PNG, ...)", plain_photo.try_load),
)


# ---------------------------------------------------------------------------------------------------------------
# Finding the input files


def iter_input_files(input_path: Path, exclude: Optional[Path] = None) -> Iterator[Path]:
    """Every file under ``input_path`` (or the file itself), sorted, without following folder symlinks (loops).

    ``exclude`` (the output folder, where it lies inside the input) is not walked: the app never reads its own
    outputs back as inputs.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        yield input_path
        return
    excluded = Path(exclude).resolve() if exclude is not None else None
    for root, dirs, files in os.walk(input_path, followlinks=False):
        dirs[:] = sorted(d for d in dirs if excluded is None or (Path(root) / d).resolve() != excluded)
        for name in sorted(files):
            path = Path(root) / name
            if name == "DICOMDIR" or is_sidecar(path):
                continue
            yield path


# ---------------------------------------------------------------------------------------------------------------
# One file


def load_file(path: Path, source_file: str) -> Case:
    """One file to one case.  Never raises: every problem becomes an ``error`` or ``skipped`` case."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file (a FIFO, socket or device): not opened")
        if info.st_size == 0:
            raise ValueError("empty file (0 bytes)")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{info.st_size} bytes, more than the {MAX_FILE_BYTES} allowed for one photograph")
        for kind in INPUT_KINDS:
            case = kind.try_load(path, source_file)
            if case is not None:
                return case
        raise SkippedInput("neither " + " nor ".join(kind.description for kind in INPUT_KINDS))
    except SkippedInput as exc:
        return Case(source_file=source_file, status=CaseStatus.SKIPPED, error=f"{source_file}: skipped: {exc}")
    except MemoryError:
        case = Case(source_file=source_file)
        case.fail("loading", "out of memory decoding the image")
        return case
    except OSError as exc:  # the reason without the absolute path: results.json names no site folder layout
        case = Case(source_file=source_file)
        case.fail("loading", f"{type(exc).__name__}: {exc.strerror or exc}")
        return case
    except Exception as exc:  # one bad file must never end the batch
        case = Case(source_file=source_file)
        case.fail("loading", exc)
        return case


class SkinPhotoLoaderOperator(Operator):
    """Walks the input folder and emits the photographs in it as lists of :class:`Case`, a chunk per tick.

    Reads DICOM Dermoscopic Photography (DMS), VL Photographic (XC) and RGB Secondary Capture images
    (uncompressed or JPEG baseline), and plain JPEG/PNG photos, which it wraps as VL Photographic sources.
    Non-photo DICOM (CT, SR, ...) becomes a ``skipped`` case, an unreadable file an ``error`` case.
    Duplicate SOPInstanceUIDs (the same image twice) are reported once as errors, never processed twice.

    Named output:
        cases: CaseBatch (a list of Case), at most ``chunk_size`` per tick, and no more photos once they hold
        ``chunk_pixels`` pixels (a chunk of large photos is shorter, so the chunks in flight bound the memory);
        the operator stops itself after the last file, whose batch has ``last`` set (an empty input folder gives
        one empty last batch).
    """

    def __init__(
        self, fragment: Fragment, *args, input_path: Path, chunk_size: int = 8, chunk_pixels: Optional[int] = None,
        exclude: Optional[Path] = None, **kwargs
    ):
        self.input_path = Path(input_path)
        self.exclude = exclude
        self.chunk_size = max(1, int(chunk_size))
        self.chunk_pixels = chunk_pixels
        self._files: Optional[Iterator[Path]] = None
        self._seen_sop_instances: dict = {}
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.output("cases")

    def compute(self, op_input, op_output, context):
        if self._files is None:
            self._files = iter_input_files(self.input_path, self.exclude)
        chunk: List[Case] = []
        pixels = 0
        exhausted = False
        while len(chunk) < self.chunk_size and (self.chunk_pixels is None or pixels < self.chunk_pixels):
            try:
                path = next(self._files)
            except StopIteration:
                exhausted = True
                break
            except OSError as exc:  # a folder vanished or is unreadable mid-walk
                self._logger.warning("input folder walk stopped: %s", type(exc).__name__)
                exhausted = True
                break
            case = self._load(path)
            chunk.append(case)
            if case.rgb is not None:
                pixels += case.rgb.shape[0] * case.rgb.shape[1]
        self._logger.info("loaded %d file(s): %d ok", len(chunk), sum(c.ok for c in chunk))
        op_output.emit(CaseBatch(chunk, last=exhausted), "cases")
        if exhausted:
            self.stop_execution()

    def _load(self, path: Path) -> Case:
        base = self.input_path if self.input_path.is_dir() else self.input_path.parent
        source_file = path.relative_to(base).as_posix()
        case = load_file(path, source_file)
        self._logger.debug("%s: %s", source_file, case.status)
        uid = case.sop_instance_uid
        if case.ok and uid is not None:
            first = self._seen_sop_instances.setdefault(uid, source_file)
            if first != source_file:
                case.fail("loading", f"duplicate SOPInstanceUID, the same image as {first}; not processed twice")
        return case
