# Copyright (c) the dermseg contributors. Apache-2.0.
"""The shape most operators share: one step applied to each case of a chunk, a failure staying that case's own."""

from __future__ import annotations

import logging
from typing import List, Tuple

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .case import Case

__all__ = ["CaseStepOperator"]


class CaseStepOperator(Operator):
    """Applies :meth:`process` to every ``ok`` case; a case whose step raises becomes an ``error`` case (its
    message says ``stage`` failed) and :meth:`discard` undoes what it left behind, while the others go on.

    Named input:  cases, a chunk of :class:`~operators.case.Case`.
    Named output: cases, the same chunk.

    A step that hands something else along (the SEG writer's SEGs, which the SR writer references) names its
    extra ports in ``side_inputs``/``side_outputs`` and receives or emits on them in :meth:`begin_chunk` and
    :meth:`end_chunk`.
    """

    stage = "processing"
    side_inputs: Tuple[str, ...] = ()
    side_outputs: Tuple[str, ...] = ()

    def __init__(self, fragment: Fragment, *args, **kwargs):
        self._logger = logging.getLogger(f"{type(self).__module__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        for port in ("cases", *self.side_inputs):
            spec.input(port)
        for port in ("cases", *self.side_outputs):
            spec.output(port)

    def compute(self, op_input, op_output, context):
        self.begin_chunk(op_input)
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
        self.end_chunk(op_output)

    def begin_chunk(self, op_input) -> None:
        """Receive from the side inputs before the chunk's cases are processed; nothing by default."""

    def end_chunk(self, op_output) -> None:
        """Emit on the side outputs after the chunk's cases; nothing by default."""

    def process(self, case: Case) -> None:
        raise NotImplementedError

    def discard(self, case: Case) -> None:
        """Undo what a failed :meth:`process` left behind; nothing by default."""
