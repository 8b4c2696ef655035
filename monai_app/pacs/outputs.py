# Copyright (c) the dermseg contributors. Apache-2.0.
"""Which files of a run are DICOM objects to send, and in what order.

The sender reads the run's results.json for the outputs of each case and recognises DICOM files by their content,
so a new kind of DICOM output is sent without a change here and a PNG never is.

An :class:`OutputSelection` narrows that down for a second destination with another audience: the review
destination (``DERMSEG_REVIEW_SEND_TO``) gets only the review cases' source, BINARY SEG and overlay, and the
source comes from the input folder where the app read a DICOM file (OUT holds a source only for a wrapped photo).
Such a source is recorded as ``input:<path relative to IN>``, so its transfer record cannot be taken for an output's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional

from operators import results
from operators.conventions import SEGMENTATION_STORAGE, Route

__all__ = ["DicomObject", "OutputSelection", "find_dicom_outputs", "is_dicom_file", "read_results", "review_selection"]

INPUT_PREFIX = "input:"  # the transfer-record path of a source read from the input folder

_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

_log = logging.getLogger(__package__)


@dataclass(frozen=True)
class DicomObject:
    """A DICOM file the run wrote, as the sender needs it.  ``path`` is relative to OUT, with '/' separators."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    location: Optional[Path] = None  # where the file is, when not at OUT/path (a source in the input folder)

    def file(self, out_dir: Path) -> Path:
        """The file to read and send."""
        return self.location if self.location is not None else Path(out_dir) / self.path

    @property
    def send_rank(self) -> int:
        """Sources first, then SEGs (which reference them), then SRs (which reference both): a PACS that checks
        references, or a viewer watching the study fill up, sees every object after what it points to."""
        if self.sop_class_uid.startswith(_SR_SOP_CLASS_PREFIX):
            return 2
        return 1 if self.sop_class_uid == SEGMENTATION_STORAGE else 0


@dataclass(frozen=True)
class OutputSelection:
    """Which outputs to send: the cases on ``route`` only (None: all), the output kinds in ``kinds`` only (None:
    all), and with ``input_root`` each selected case's source file from the input folder where it is DICOM."""

    route: Optional[str] = None
    kinds: Optional[FrozenSet[str]] = None
    input_root: Optional[Path] = None

    def takes(self, case: Mapping) -> bool:
        return self.route is None or case.get("route") == self.route

    def outputs(self, case: Mapping) -> Mapping:
        outputs = case.get("outputs")
        if self.kinds is None or not isinstance(outputs, Mapping):
            return outputs
        return {kind: path for kind, path in outputs.items() if kind in self.kinds}


def review_selection(input_root: Optional[Path]) -> OutputSelection:
    """What a review destination gets: each review case's source, BINARY SEG and overlay Secondary Capture."""
    return OutputSelection(route=Route.REVIEW.value, kinds=frozenset({"source", "seg", "overlay_sc"}), input_root=input_root)


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


def find_dicom_outputs(
    out_dir: Path, results: Optional[dict] = None, select: Optional[OutputSelection] = None
) -> List[DicomObject]:
    """The DICOM files among the outputs that results.json lists (those ``select`` takes), in sending order.

    Files are recognised by their content (preamble and ``DICM``), not by the output's name or extension, so a
    PNG overlay is left out and a new kind of DICOM output is sent without changes here.  An output that points
    outside OUT (or a source outside the input folder) or no longer exists is logged and left out.
    """
    out_dir = Path(out_dir)
    results = read_results(out_dir) if results is None else results
    select = select or OutputSelection()
    root = out_dir.resolve()
    objects: Dict[str, DicomObject] = {}
    for case in results.get("cases", []):
        if not isinstance(case, dict) or not select.takes(case):
            continue
        if select.input_root is not None and "source" not in (case.get("outputs") or {}):
            _add_input_source(objects, Path(select.input_root), case.get("source_file"))
        for relative in _output_paths(select.outputs(case)):
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


def _add_input_source(objects: Dict[str, DicomObject], input_root: Path, source_file) -> None:
    """The case's source file in the input folder, where it is a DICOM file inside that folder."""
    if not isinstance(source_file, str):
        return
    base = input_root.resolve() if input_root.is_dir() else input_root.resolve().parent
    path = (base / source_file).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        _log.warning("source %r is not in the input folder %s: not sent", source_file, input_root)
    elif is_dicom_file(path):
        key = INPUT_PREFIX + path.relative_to(base).as_posix()
        objects.setdefault(key, _describe(path, key, location=path))


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


def _describe(path: Path, relative: str, location: Optional[Path] = None) -> DicomObject:
    from pydicom import dcmread

    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    file_meta = meta.file_meta
    return DicomObject(
        path=relative,
        sop_class_uid=str(getattr(file_meta, "MediaStorageSOPClassUID", "") or meta.get("SOPClassUID", "")),
        sop_instance_uid=str(getattr(file_meta, "MediaStorageSOPInstanceUID", "") or meta.get("SOPInstanceUID", "")),
        transfer_syntax_uid=str(file_meta.TransferSyntaxUID),
        location=location,
    )
