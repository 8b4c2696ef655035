# Copyright (c) the dermseg contributors. Apache-2.0.
"""MONAI Deploy operators of the dermseg skin-lesion app, one step each, chained by ``monai_app.app``.

    SkinPhotoLoaderOperator          input folder -> cases (RGB pixels + DICOM source; plain photos wrapped)
    LesionSegmentationOperator       cases -> cases with probability map and mask (shared preprocessing)
    ConfidenceRoutingOperator        cases -> cases with confidence and route (accepted | review)
    LesionSegWriterOperator          cases -> DICOM-SEG (binary, fractional) per case
    MeasurementReportWriterOperator  cases -> TID 1500 SR (lesion area, confidence) per case
    OverlayWriterOperator            cases -> overlay PNG and burned-in Secondary Capture per case
    ResultsWriterOperator            cases -> OUT/results.json
"""

from .case import Case, CaseStatus, ModelInfo
from .case_step import CaseStepOperator
from .confidence_operator import ConfidenceRoutingOperator
from .loader import SkinPhotoLoaderOperator
from .segmentation import LesionSegmentationOperator
from .writers import (
    LesionSegWriterOperator,
    MeasurementReportWriterOperator,
    OverlayWriterOperator,
    ResultsWriterOperator,
)

__all__ = [
    "Case",
    "CaseStatus",
    "ModelInfo",
    "CaseStepOperator",
    "SkinPhotoLoaderOperator",
    "LesionSegmentationOperator",
    "ConfidenceRoutingOperator",
    "LesionSegWriterOperator",
    "MeasurementReportWriterOperator",
    "OverlayWriterOperator",
    "ResultsWriterOperator",
]
