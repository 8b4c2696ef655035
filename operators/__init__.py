# Copyright (c) the dermseg contributors. Apache-2.0.
"""MONAI Deploy operators of the dermseg skin-lesion app, one step each, chained by ``monai_app.app``.

    SkinPhotoLoaderOperator          input folder -> cases (RGB pixels + DICOM source; plain photos wrapped)
    LesionSegmentationOperator       cases -> cases with probability map and mask (shared preprocessing)
    ConfidenceRoutingOperator        cases -> cases with confidence and route (accepted | review)
    LesionSegWriterOperator          cases -> DICOM-SEG (binary, fractional) per case
    MeasurementReportWriterOperator  cases -> TID 1500 SR (lesion area, confidence) per case
    OverlayWriterOperator            cases -> overlay PNG and burned-in Secondary Capture per case
    JoinWritersOperator              the writer branches' cases -> cases (a case whole or without outputs)
    ResultsWriterOperator            cases -> OUT/results.json
    ReleasePixelsOperator            cases -> (their arrays dropped: the last step)

The operator classes are imported on first use, so a module that needs only ``operators.conventions`` (the edge
store, the command-line tools) does not load Holoscan.
"""

import importlib

_HOMES = {
    "Case": ".case",
    "ModelInfo": ".case",
    "CaseStatus": ".conventions",
    "Route": ".conventions",
    "CaseStepOperator": ".case_step",
    "SkinPhotoLoaderOperator": ".loader",
    "LesionSegmentationOperator": ".segmentation",
    "ConfidenceRoutingOperator": ".confidence_operator",
    "LesionSegWriterOperator": ".writers",
    "MeasurementReportWriterOperator": ".writers",
    "OverlayWriterOperator": ".writers",
    "JoinWritersOperator": ".writers",
    "ResultsWriterOperator": ".writers",
    "ReleasePixelsOperator": ".writers",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
