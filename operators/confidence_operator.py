# Copyright (c) the dermseg contributors. Apache-2.0.
"""Confidence operator: a confidence in [0, 1] per case and its route, ``accepted`` or ``review``."""

from __future__ import annotations

from monai.deploy.core import Fragment

from .case import Case
from .case_step import CaseStepOperator
from .confidence import DEFAULT_MEASURE, DEFAULT_THRESHOLD, MEASURES, case_confidence, route_for

__all__ = ["ConfidenceRoutingOperator"]


class ConfidenceRoutingOperator(CaseStepOperator):
    """Scores each segmentation with :func:`operators.confidence.case_confidence` (its ``measure``) and routes it.

    Named input:
        cases: list of Case with ``probability``.
    Named output:
        cases: the same list; ``ok`` cases now carry ``confidence`` and ``route``
        (``accepted`` at or above ``threshold``, ``review`` below: a person checks and corrects it).
    """

    stage = "confidence"

    def __init__(self, fragment: Fragment, *args, threshold: float = DEFAULT_THRESHOLD, measure: str = DEFAULT_MEASURE, **kwargs):
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"confidence threshold {threshold} must be between 0 and 1")
        if measure not in MEASURES:
            raise ValueError(f"confidence measure {measure!r} must be one of {', '.join(MEASURES)}")
        self.threshold = float(threshold)
        self.measure = measure
        super().__init__(fragment, *args, **kwargs)

    def process(self, case: Case) -> None:
        case.confidence = case_confidence(case.probability, case.flip_agreement, self.measure)
        case.route = route_for(case.confidence, self.threshold)
