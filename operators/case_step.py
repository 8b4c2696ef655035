# Copyright (c) the dermseg contributors. Apache-2.0.
"""The shape most operators share: one step applied to each case of a chunk, a failure staying that case's own."""

from __future__ import annotations

import logging
from typing import List

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .case import Case

__all__ = ["CaseStepOperator"]


class CaseStepOperator(Operator):
    """Applies :meth:`process` to every ``ok`` case; a case whose step raises becomes an ``error`` case (its
    message says ``stage`` failed) and :meth:`discard` undoes what it left behind, while the others go on.

    Named input:  cases, a chunk of :class:`~operators.case.Case`.
    Named output: cases, the same chunk.
    """

    stage = "processing"

    def __init__(self, fragment: Fragment, *args, **kwargs):
        self._logger = logging.getLogger(f"{type(self).__module__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("cases")
        spec.output("cases")

    def compute(self, op_input, op_output, context):
        cases: List[Case] = op_input.receive("cases")
        for case in cases:
            if not case.ok:
                continue
            try:
                self.process(case)
            except Exception as exc:
                case.fail(self.stage, exc)
                self.discard(case)
        op_output.emit(cases, "cases")

    def process(self, case: Case) -> None:
        raise NotImplementedError

    def discard(self, case: Case) -> None:
        """Undo what a failed :meth:`process` left behind; nothing by default."""
