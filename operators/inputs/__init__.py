# Copyright (c) the dermseg contributors. Apache-2.0.
"""The input kinds the loader reads, one module each; ``operators.loader`` walks the folder and dispatches.

    common        the limits every kind checks before decoding (MAX_PIXELS, MAX_FILE_BYTES) and SkippedInput
    dicom_photo   DICOM photographs (Dermoscopic, VL Photographic, Secondary Capture), read as they are
    plain_photo   JPEG, PNG, ... photos (with an optional sidecar JSON), wrapped as VL Photographic DICOM

Each kind module has ``try_load(path, source_file)``: the file's :class:`~operators.case.Case`, or ``None``
when the file is not of that kind, so the loader tries the next.  A problem with a file that *is* of the kind
raises (``ValueError`` with the reason, or :class:`~operators.inputs.common.SkippedInput`), and the loader turns
it into the case's ``error`` or ``skipped`` entry.  A new kind is one module here plus one ``InputKind`` line in
``operators.loader.INPUT_KINDS``.
"""
