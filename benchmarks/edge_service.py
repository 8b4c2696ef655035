# Copyright (c) the dermseg contributors. Apache-2.0.
"""How long from a study pushed to the edge's front door until its results are in the PACS?

    .venv/bin/python benchmarks/edge_service.py [--runs 2] [--photos 3] [--model training_bundle/models]

The set-up of ``tests/test_serve.py`` (``tests/_serve_helpers.py``), with the deployed Orthanc configuration
(``deploy/orthanc/orthanc.json``) at its shipped ``StableAge`` (5 s) and the service's default poll interval (2 s): two real Orthancs, the front
door and a PACS, in a loopback-only network namespace, and ``python -m monai_app.serve`` between them with the
shipped model.  Each run pushes one study of ``--photos`` 512-px ISIC dermoscopy photos (JPEG DMS) by C-STORE
and times until the PACS holds its 4 results per photo (SEG, probability SEG, SR, overlay SC).  Needs root
(``ip netns``) and Debian's Orthanc, as the tests do; skips where they are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

RESULTS_PER_PHOTO = 4
POLL_INTERVAL = "2"  # the service's default


def photo_study(serve, count: int, seed: str) -> list:
    """``count`` 512-px ISIC photos as JPEG Dermoscopic Photography in one new study."""
    study_uid, series_uid = serve.generate_uid(), serve.generate_uid()
    return [
        serve.photo_dataset(serve.isic_rgb(f"ISIC_{number + 10:07d}", None), study_instance_uid=study_uid,
                            series_instance_uid=series_uid, instance_number=number + 1, seed=f"{seed}-{number}",
                            compression="jpeg")
        for number in range(count)
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--model", type=Path, default=REPO / "training_bundle" / "models")
    args = parser.parse_args(argv)

    from _orthanc import HarnessError, NetworkNamespace, Orthanc
    import _serve_helpers as serve

    stable_age = json.loads(serve.DEPLOYED_ORTHANC_CONFIG.read_text())["StableAge"]

    class DeployedFrontDoor(serve.FrontDoor):
        def configuration(self):
            return {**super().configuration(), "StableAge": stable_age}

    try:
        namespace = NetworkNamespace.create()
    except HarnessError as error:
        print(f"SKIP: {error}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="edge-service-bench-"))
    front = DeployedFrontDoor(namespace, work / "front", aet="DERMSEG_AI")
    pacs = Orthanc(namespace, work / "pacs", aet="PACS")
    service = None
    times = []
    try:
        front.start()
        pacs.start()
        service = serve.Service(namespace, work, front, args.model, send_to=pacs.dicom_target,
                                **{"--poll-interval": POLL_INTERVAL})
        started = time.monotonic()
        service.start()
        service.wait_for("healthz", lambda: service.get("/healthz")[0] == 200, timeout=120)
        print(f"service start-up until /healthz is 200: {time.monotonic() - started:.1f} s")
        for run in range(args.runs):
            photos = photo_study(serve, args.photos, seed=f"bench-{run}")
            study_uid = photos[0].StudyInstanceUID
            serve.c_store(namespace, front, photos)
            pushed = time.monotonic()
            expected = RESULTS_PER_PHOTO * args.photos
            service.wait_for("results", lambda: len(serve.study_instances(pacs, study_uid)) >= expected, timeout=600)
            times.append(time.monotonic() - pushed)
            print(f"run {run + 1}: {args.photos} photos pushed -> {expected} results in the PACS: {times[-1]:.1f} s")
    finally:
        if service is not None:
            service.stop()
        front.stop()
        pacs.stop()
        namespace.delete()
    print(f"\nStableAge {stable_age} s, poll interval 2 s, model {args.model}: push to results in the PACS "
          f"{min(times):.1f}-{max(times):.1f} s over {len(times)} run(s) (target: 30 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
