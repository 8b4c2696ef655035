# Copyright (c) the dermseg contributors. Apache-2.0.
"""What may leave a site in the federated fine-tune: the network's weights, and nothing else.

``WeightsOnly`` is an NVIDIA FLARE task-result filter (``nvflare.apis.filter.Filter``): FLARE runs it at the site
on every result the site's training returns, after the training script and before anything is sent.  It lets
a result through only if it is exactly the network's ``state_dict``: one DXO of kind ``WEIGHTS`` (or
``WEIGHT_DIFF``), holding a floating-point or integer array for every name the network has, with the network's
shape and no other entry; its meta holds only the number of training steps (FedAvg's weight); its headers only
numbers and FLARE's own short tags.  Anything else (an image or mask array, a file path, a list of cases, a
metric) blocks the result: FLARE then sends an error reply without the content, and the round fails loudly
instead of leaking.

Every result that passes is recorded, without the weights, as one JSON line in ``weights_only_audit.jsonl`` in
the site's job folder: the round, the number of arrays and values, their bytes and the meta.  It is the site's
own account of what it sent.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import ContentBlockedException, Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

__all__ = ["WeightsOnly", "payload_problems", "AUDIT_FILE_NAME", "STEPS_KEY"]

AUDIT_FILE_NAME = "weights_only_audit.jsonl"
# FedAvg weighs each site's weights by the steps it trained (nvflare FLMetaKey.NUM_STEPS_CURRENT_ROUND)
STEPS_KEY = "NUM_STEPS_CURRENT_ROUND"
_WEIGHT_KINDS = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)
# the Shareable's own entries: its headers and the DXO; anything else beside them is refused
_SHAREABLE_KEYS = {ReservedHeaderKey.HEADERS, "DXO"}
# FLARE's header tags (content type, round numbers) are short words; a path or an encoded image is not
_MAX_HEADER_TEXT = 32


def _is_number(value) -> bool:
    return isinstance(value, (bool, int, float, np.integer, np.floating))


def _is_tag(value, depth: int = 0) -> bool:
    """A number, None, a short word, or a small dict of those (FLARE's cookie jar echoes the server's tags)."""
    if value is None or _is_number(value):
        return True
    if isinstance(value, str):
        return len(value) <= _MAX_HEADER_TEXT and "/" not in value and "\\" not in value
    if isinstance(value, dict) and depth == 0:
        return len(value) <= 8 and all(isinstance(k, str) and _is_tag(v, 1) for k, v in value.items())
    return False


def _headers(shareable: Shareable) -> dict:
    return dict(shareable.get(ReservedHeaderKey.HEADERS) or {})


def payload_problems(shareable: Shareable, expected_shapes: Mapping[str, Sequence[int]]) -> List[str]:
    """Why ``shareable`` is more than the weights of a network with ``expected_shapes``; empty if it is not."""
    problems = [f"unexpected entry {key!r} in the result" for key in sorted(set(shareable) - _SHAREABLE_KEYS)]
    for key, value in _headers(shareable).items():
        if not _is_tag(value):
            problems.append(f"header {key!r} is not a number or a short tag: {type(value).__name__}")
    try:
        dxo = from_shareable(shareable)
    except Exception as exc:  # not a DXO at all
        return problems + [f"the result is not one DXO: {exc}"]
    if dxo.data_kind not in _WEIGHT_KINDS:
        problems.append(f"data kind {dxo.data_kind!r}, expected one of {_WEIGHT_KINDS}")
        return problems
    data = dxo.data or {}
    for name in sorted(set(data) - set(expected_shapes)):
        problems.append(f"{name!r} is not a weight of the network")
    for name in sorted(set(expected_shapes) - set(data)):
        problems.append(f"the network's weight {name!r} is missing")
    for name in sorted(set(data) & set(expected_shapes)):
        value = data[name]
        shape = getattr(value, "shape", None)
        dtype = getattr(value, "dtype", None)
        if shape is None or dtype is None:
            problems.append(f"{name!r} is a {type(value).__name__}, not an array")
        elif tuple(shape) != tuple(expected_shapes[name]):
            problems.append(f"{name!r} has shape {tuple(shape)}, the network's is {tuple(expected_shapes[name])}")
        elif not str(dtype).replace("torch.", "").startswith(("float", "bfloat", "int", "uint")):
            problems.append(f"{name!r} has dtype {dtype}, not a number type")
    for key, value in (dxo.meta or {}).items():
        if key != STEPS_KEY:
            problems.append(f"meta {key!r} is not allowed (only {STEPS_KEY})")
        elif not _is_number(value):
            problems.append(f"meta {STEPS_KEY} is a {type(value).__name__}, not a number")
    return problems


class WeightsOnly(Filter):
    """Block any task result that is not exactly the network's weights; record each one that passes.

    Args:
        expected_shapes: ``{name: shape}`` of the network's ``state_dict`` (parameters and buffers), as the
            job that trains it builds it.
        audit_file: file name, in the site's job folder, of the record of what was sent (JSON lines).
    """

    def __init__(self, expected_shapes: Dict[str, List[int]], audit_file: str = AUDIT_FILE_NAME):
        super().__init__()
        # FLARE writes a filter into the job's config from the attributes named like its arguments
        self.expected_shapes = {str(k): [int(s) for s in v] for k, v in expected_shapes.items()}
        self.audit_file = audit_file

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        problems = payload_problems(shareable, self.expected_shapes)
        if problems:
            self.log_error(fl_ctx, "blocked a result that is not only the network's weights: " + "; ".join(problems))
            raise ContentBlockedException("not only the network's weights: " + "; ".join(problems[:5]))
        self._record(shareable, fl_ctx)
        return shareable

    def _record(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        dxo = from_shareable(shareable)
        arrays = list(dxo.data.values())
        entry = {
            "site": fl_ctx.get_identity_name(),
            "round": shareable.get_header("current_round"),
            "data_kind": dxo.data_kind,
            "arrays": len(arrays),
            "values": int(sum(int(np.prod(a.shape)) for a in arrays)),
            "bytes": int(sum(int(np.prod(a.shape)) * _itemsize(a) for a in arrays)),
            "names": sorted(dxo.data),
            "meta": {k: float(v) for k, v in (dxo.meta or {}).items()},
            "headers": sorted(_headers(shareable)),
        }
        folder = _job_folder(fl_ctx)
        if folder:
            with open(os.path.join(folder, self.audit_file), "a") as f:
                f.write(json.dumps(entry) + "\n")
        self.log_info(fl_ctx, f"sent only weights: {entry['arrays']} arrays, {entry['values']} values, meta {entry['meta']}")


def _itemsize(array) -> int:
    return int(getattr(array, "itemsize", 0) or array.element_size())


def _job_folder(fl_ctx: FLContext) -> Optional[str]:
    engine = fl_ctx.get_engine()
    if engine is None:  # a filter run outside a FLARE job (its unit test) records nothing
        return None
    return engine.get_workspace().get_run_dir(fl_ctx.get_job_id())
