# Copyright (c) the dermseg contributors. Apache-2.0.
"""Which files of a run are DICOM objects to send, and in what order.

The sender reads the run's results.json for the outputs of each case and recognises DICOM files by their content,
so a new kind of DICOM output is sent without a change here and a PNG never is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

from operators import results
from operators.conventions import SEGMENTATION_STORAGE

__all__ = ["DicomObject", "find_dicom_outputs", "is_dicom_file", "read_results"]

_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

_log = logging.getLogger(__package__)


@dataclass(frozen=True)
class DicomObject:
    """A DICOM file the run wrote, as the sender needs it.  ``path`` is relative to OUT, with '/' separators."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    @property
    def send_rank(self) -> int:
        """Sources first, then SEGs (which reference them), then SRs (which reference both): a PACS that checks
        references, or a viewer watching the study fill up, sees every object after what it points to."""
        if self.sop_class_uid.startswith(_SR_SOP_CLASS_PREFIX):
            return 2
        return 1 if self.sop_class_uid == SEGMENTATION_STORAGE else 0


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file: a 128-byte preamble then ``DICM`` (what the app writes)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_results(out_dir: Path) -> dict:
    """The run's results.json, checked against its schema; a broken one is refused before anything is sent."""
    try:
        return results.read_results(out_dir)
    except ValueError as error:
        raise ValueError(f"{error}; nothing sent") from None


def find_dicom_outputs(out_dir: Path, results: Optional[dict] = None) -> List[DicomObject]:
    """The DICOM files among the outputs that results.json lists, in the order they should be sent.

    Files are recognised by their content (preamble and ``DICM``), not by the output's name or extension, so a
    PNG overlay is left out and a new kind of DICOM output is sent without changes here.  An output that points
    outside OUT or no longer exists is logged and left out.
    """
    out_dir = Path(out_dir)
    results = read_results(out_dir) if results is None else results
    root = out_dir.resolve()
    objects: Dict[str, DicomObject] = {}
    for case in results.get("cases", []):
        outputs = case.get("outputs") if isinstance(case, dict) else None
        for relative in _output_paths(outputs):
            path = (out_dir / relative).resolve()
            if not path.is_relative_to(root):
                _log.warning("results.json output %r lies outside %s: not sent", relative, out_dir)
                continue
            key = path.relative_to(root).as_posix()
            if key in objects:
                continue
            if not path.is_file():
                _log.warning("results.json lists %s but the file is missing: not sent", key)
                continue
            if is_dicom_file(path):
                objects[key] = _describe(path, key)
    return sorted(objects.values(), key=lambda obj: obj.send_rank)  # stable: the app's order within a rank


def _output_paths(outputs) -> Iterable[str]:
    """Every path string in a case's ``outputs`` (a dict of kind -> path; lists tolerated)."""
    if isinstance(outputs, str):
        yield outputs
    elif isinstance(outputs, Mapping):
        for value in outputs.values():
            yield from _output_paths(value)
    elif isinstance(outputs, (list, tuple)):
        for value in outputs:
            yield from _output_paths(value)


def _describe(path: Path, relative: str) -> DicomObject:
    from pydicom import dcmread

    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    file_meta = meta.file_meta
    return DicomObject(
        path=relative,
        sop_class_uid=str(getattr(file_meta, "MediaStorageSOPClassUID", "") or meta.get("SOPClassUID", "")),
        sop_instance_uid=str(getattr(file_meta, "MediaStorageSOPInstanceUID", "") or meta.get("SOPInstanceUID", "")),
        transfer_syntax_uid=str(file_meta.TransferSyntaxUID),
    )
