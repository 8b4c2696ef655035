# Copyright (c) the dermseg contributors. Apache-2.0.
"""Corrections that come back through the PACS: the reviewers' SEGs, found by QIDO-RS and fetched by WADO-RS.

A reviewer opens a review case in a viewer (OHIF, Slicer), fixes the lesion and stores a DICOM-SEG back into the
PACS.  The store knows the study of every case still waiting, so the pull asks the DICOMweb server, one study at a
time, for the Segmentation instances (SOP Class UID = Segmentation Storage) in the studies of waiting cases,
fetches those it did not write itself (Manufacturer ``dermseg``: the app's own SEGs, sent beside the source) and
hands them to the folder import (``corrections.import_corrections``), so a SEG from the PACS passes exactly the
checks a SEG from a folder does: it must reference a case of this store that is still waiting, be as large as
the source, and so on.  A study with waiting cases may also hold SEGs of other images: those are reported, never
imported.  Only the studies of waiting cases are asked, so once every case is corrected a pull asks nothing,
and a pull repeated while cases still wait reports the SEGs it imported before as ``unchanged``.

Authentication as for sending: HTTP basic with ``user:password@`` in the URL, or a bearer token
(``DERMSEG_DICOMWEB_TOKEN``).  The URL with its password comes from the environment
(``DERMSEG_REVIEW_PULL_FROM``): the command line, which every user of the machine can read, is refused one
(``__main__.py``).  The HTTP work is ``dicomweb-client``'s.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from operators.conventions import MANUFACTURER, SEGMENTATION_STORAGE, is_valid_uid

from .corrections import CorrectionError, ImportReport, import_corrections
from .schema import CaseState
from .store import EdgeStore

__all__ = ["PullReport", "pull_corrections", "dicomweb_client_for"]

_log = logging.getLogger("monai_app.edge.store")

# DICOM JSON tags of the QIDO-RS answer
_SOP_CLASS, _SOP_INSTANCE, _SERIES, _MANUFACTURER = "00080016", "00080018", "0020000E", "00080070"


@dataclass
class PullReport:
    """What a pull did: the import's report, plus how many SEGs were found and how many were our own."""

    report: ImportReport
    studies: int = 0  # studies of waiting cases asked
    found: int = 0  # Segmentation instances in them
    own: int = 0  # of those, written by this app: left alone


def dicomweb_client_for(target, token: Optional[str] = None, timeout: float = 30.0):
    """A ``dicomweb_client.DICOMwebClient`` for a parsed DICOMweb target (``monai_app.pacs.DicomWebTarget``):
    basic authentication where the target has a user, else the bearer token where one is given."""
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    if target.username is not None:
        session = create_session_from_user_pass(target.username, target.password or "")
    else:
        session = create_session()
    headers = {"Authorization": f"Bearer {token}"} if token and target.username is None else None
    return DICOMwebClient(target.url, session=session, headers=headers, timeout=timeout)


def _value(item: Dict, tag: str) -> Optional[str]:
    values = (item.get(tag) or {}).get("Value") or [None]
    return None if values[0] is None else str(values[0])


def _segs_in_study(client, study: str) -> List[Dict]:
    """The Segmentation instances of one study, by QIDO-RS (the SOP class is checked here too: a server may
    ignore a filter it does not index)."""
    found = client.search_for_instances(
        study_instance_uid=study, search_filters={"SOPClassUID": SEGMENTATION_STORAGE},
        fields=["Manufacturer", "SeriesInstanceUID", "SOPClassUID"], get_remaining=True,
    )
    return [item for item in found if _value(item, _SOP_CLASS) in (None, SEGMENTATION_STORAGE)]


def pull_corrections(store: EdgeStore, client) -> PullReport:
    """Fetch the reviewers' SEGs of the waiting cases' studies from ``client`` and import them (see the module
    docstring).  Network and server errors propagate (``requests``' exceptions): nothing is imported then."""
    studies = sorted({case.study_instance_uid for case in store.cases((CaseState.REVIEW,))})
    pull = PullReport(report=ImportReport(), studies=len(studies))
    where: Dict[str, Path] = {}  # file name -> the SEG's WADO-RS path, what the report names
    # fetched into the store's own folder (patient data stays on the store's disk), removed afterwards
    with tempfile.TemporaryDirectory(dir=store.root, prefix=".pull-") as folder:
        for study in studies:
            for item in _segs_in_study(client, study):
                pull.found += 1
                series, sop = _value(item, _SERIES), _value(item, _SOP_INSTANCE)
                if _value(item, _MANUFACTURER) == MANUFACTURER:
                    pull.own += 1
                    continue
                if not (is_valid_uid(series) and is_valid_uid(sop)):
                    _log.warning("a SEG in study %s has no usable series or instance UID: left out", study)
                    continue
                dataset = client.retrieve_instance(study, series, sop)
                if str(dataset.get("Manufacturer", "")) == MANUFACTURER:  # the server did not return it above
                    pull.own += 1
                    continue
                dataset.save_as(Path(folder) / f"{sop}.dcm", enforce_file_format=True)
                where[f"{sop}.dcm"] = Path(f"studies/{study}/series/{series}/instances/{sop}")
        report = import_corrections(store, folder)
    pull.report = ImportReport(
        imported=[(where.get(path.name, path), uid) for path, uid in report.imported],
        unchanged=[(where.get(path.name, path), uid) for path, uid in report.unchanged],
        failed=[CorrectionError(where.get(error.path.name, error.path), error.problem) for error in report.failed],
    )
    return pull
