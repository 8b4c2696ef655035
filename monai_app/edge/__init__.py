# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge loop of the paper's cloud-edge service: sample store, review queue, corrections, datalist for
retraining, model updates.

The app calls one method per written case when ``DERMSEG_EDGE_STORE=DIR`` is set::

    with EdgeStore(DIR) as store:
        store.record_case(sop_instance_uid=..., study_instance_uid=..., series_instance_uid=..., source_path=...,
                          image=rgb, mask=mask, confidence=c, route="accepted" | "review", model_version=v,
                          seg_path=..., sr_path=..., overlay_path=...)

Everything else is ``python -m monai_app.edge --store DIR <command>``.

The parts: ``store.py`` (the case store and review queue, ``EdgeStore``), ``model_registry.py`` (the deployed
model versions), ``database.py`` (the crash-safe write protocol both use), ``schema.py`` (the folder layout, the
SQLite schema, the case states), ``corrections.py`` and ``review_package.py`` (the reviewer's round trip by
folder), ``pacs_pull.py`` (the same round trip through a PACS, by DICOMweb), ``model_gate.py`` (a new version
installs only if it is no worse on the site's corrected cases).
"""

from .model_registry import ModelRegistry
from .schema import CaseRecord, CaseState, EdgeStoreError
from .store import EdgeStore, is_valid_uid

__all__ = ["EdgeStore", "EdgeStoreError", "CaseRecord", "CaseState", "ModelRegistry", "is_valid_uid"]
