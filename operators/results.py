# Copyright (c) the dermseg contributors. Apache-2.0.
"""``OUT/results.json``: the run's record, one entry per input file, and its schema in one place.

The results writer makes it; the PACS sender, the edge tools and a site's own scripts read it.  Everyone
reads it through :func:`read_results`, which checks it against :data:`RESULTS_SCHEMA` (JSON Schema), so a
reader never guesses at a field and a hand-edited or truncated file is refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Mapping, Optional

from networks.durable import atomic_write_bytes

from .conventions import RESULTS_FILE, CaseStatus, Route

if TYPE_CHECKING:  # the readers (the PACS sender, the edge tools) load no torch or numpy through this module
    from .case import Case

__all__ = ["RESULTS_FILE", "RESULTS_SCHEMA", "OUTPUT_NAMES", "case_entry", "write_results", "write_document", "read_results"]

# The files a case may have in OUT/<source SOPInstanceUID>/: kind (the keys of an entry's "outputs") -> file
# name.  Fixed names, nothing taken from the input.
OUTPUT_NAMES = {
    "source": "source.dcm",
    "seg": "seg.dcm",
    "seg_probability": "seg_probability.dcm",
    "sr": "sr.dcm",
    "overlay_png": "overlay.png",
    "overlay_sc": "overlay_sc.dcm",
}

_NUMBER_OR_NULL = {"type": ["number", "null"]}
RESULTS_SCHEMA: Dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dermseg results.json",
    "type": "object",
    "required": ["cases"],
    "properties": {
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source_file", "source_sop_instance_uid", "status", "error", "confidence", "route", "outputs"],
                "properties": {
                    "source_file": {"type": "string", "description": "relative to the input folder"},
                    "source_sop_instance_uid": {"type": ["string", "null"]},
                    "status": {"enum": [s.value for s in CaseStatus]},
                    "error": {"type": ["string", "null"], "description": "names the file and the problem"},
                    "confidence": _NUMBER_OR_NULL,
                    "route": {"enum": [r.value for r in Route] + [None]},
                    "outputs": {
                        "type": "object",
                        "description": "kind (OUTPUT_NAMES' keys, or a later writer's) -> file path relative to OUT",
                        "additionalProperties": {"type": "string"},
                    },
                    "lesion_area_mm2": _NUMBER_OR_NULL,
                    "lesion_area_px": {"type": ["integer", "null"]},
                    "model": {
                        "type": "object",
                        "required": ["name", "version"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
                    },
                },
            },
        },
        "settings": {"type": "object", "description": "what the run was configured with (no paths)"},
        "transfers": {"type": "array", "description": "what the PACS sender sent where (monai_app.pacs)"},
    },
}


def case_entry(case: "Case") -> Dict:
    """One case as results.json shows it."""
    entry = {
        "source_file": case.source_file,
        "source_sop_instance_uid": case.sop_instance_uid if case.status != CaseStatus.SKIPPED else None,
        "status": str(case.status),
        "error": case.error,
        "confidence": None if case.confidence is None else round(float(case.confidence), 4),
        "route": None if case.route is None else str(case.route),
        "outputs": dict(case.outputs) if case.ok else {},
    }
    if case.lesion_area_mm2 is not None:
        entry["lesion_area_mm2"] = case.lesion_area_mm2
    else:
        entry["lesion_area_px"] = case.lesion_area_px
    if case.model is not None:
        entry["model"] = {"name": case.model.name, "version": case.model.version}
    return entry


def write_results(output_folder: Path, entries: Iterable[Mapping], settings: Optional[Mapping] = None) -> Path:
    """Write ``OUT/results.json`` from the run's entries and settings (see :func:`write_document`)."""
    document: Dict = {"cases": list(entries)}
    if settings:
        document["settings"] = dict(settings)
    return write_document(output_folder, document)


def write_document(output_folder: Path, document: Mapping) -> Path:
    """Write a whole results.json document (as :func:`read_results` gave it, changed) atomically: a reader sees
    the previous complete file or the new one."""
    path = Path(output_folder) / RESULTS_FILE
    atomic_write_bytes(path, json.dumps(document, indent=2, default=_json_default).encode("utf-8"))
    return path


def read_results(output_folder: Path) -> Dict:
    """The results.json of an output folder, checked against :data:`RESULTS_SCHEMA`.

    Raises FileNotFoundError when there is none, ValueError naming the file and the first problem otherwise.
    """
    import jsonschema  # only where a file is read back

    path = Path(output_folder) / RESULTS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {output_folder} the output folder of a dermseg run?") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    try:
        jsonschema.validate(document, RESULTS_SCHEMA)
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise ValueError(f"{path} does not match the results.json schema at {where}: {error.message}") from None
    return document


def _json_default(value):
    item = getattr(value, "item", None)  # a numpy scalar
    return item() if callable(item) else str(value)
