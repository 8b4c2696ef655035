# Copyright (c) the dermseg contributors. Apache-2.0.
"""Finding the checkpoint a resumed training run starts from."""

from __future__ import annotations

import glob
import os
import re
import zipfile

__all__ = ["latest_checkpoint", "PruneCheckpoints"]

_EPOCH = re.compile(r"epoch=(\d+)\.pt$")


def latest_checkpoint(directory: str, pattern: str = "checkpoint_epoch=*.pt") -> str:
    """Path of the checkpoint ``CheckpointSaver(save_interval=...)`` wrote last in ``directory``, or ``""``.

    "Last" is by modification time (then epoch), not by epoch alone: after a ``--resume False`` restart in the
    same folder, the new run's epoch 3 is newer than an old run's epoch 60.  A run killed while writing leaves
    a truncated file; ``torch.save`` writes a zip archive, whose central directory comes last, so such a file
    fails ``zipfile.is_zipfile`` and the previous checkpoint (the saver keeps two) is used instead.
    """
    found = []
    for path in glob.glob(os.path.join(glob.escape(str(directory)), pattern)):
        match = _EPOCH.search(os.path.basename(path))
        if match and zipfile.is_zipfile(path):
            found.append((os.path.getmtime(path), int(match.group(1)), path))
    return max(found)[2] if found else ""


class PruneCheckpoints:
    """Keep only the ``keep`` most recently written checkpoints in ``directory`` after each epoch.

    ``CheckpointSaver(n_saved=2)`` forgets, when a run is resumed, the files the interrupted run wrote, so
    without this every resume would leave two stale checkpoints behind.  Attach it after the saver.
    """

    def __init__(self, directory: str, keep: int = 2, pattern: str = "checkpoint_epoch=*.pt") -> None:
        if keep < 1:
            raise ValueError("keep at least one checkpoint")
        self.directory, self.keep, self.pattern = str(directory), int(keep), pattern

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine=None) -> None:
        found = []
        for path in glob.glob(os.path.join(glob.escape(self.directory), self.pattern)):
            match = _EPOCH.search(os.path.basename(path))
            if match:
                found.append((os.path.getmtime(path), int(match.group(1)), path))
        for _, _, path in sorted(found)[: -self.keep]:
            os.remove(path)
