# Copyright (c) the dermseg contributors. Apache-2.0.
"""The edge loop of the paper's cloud-edge service: sample store, review queue, corrections, datalist for
retraining, model updates.

The app calls one method per written case when ``DERMSEG_EDGE_STORE=DIR`` is set::

    with EdgeStore(DIR) as store:
        store.record_case(sop_instance_uid=..., study_instance_uid=..., series_instance_uid=..., source_path=...,
                          image=rgb, mask=mask, confidence=c, route="accepted" | "review", model_version=v,
                          seg_path=..., sr_path=..., overlay_path=...)

Everything else is ``python -m monai_app.edge --store DIR <command>``.
"""

from .store import CaseRecord, EdgeStore, EdgeStoreError, is_valid_uid

__all__ = ["EdgeStore", "EdgeStoreError", "CaseRecord", "is_valid_uid"]
