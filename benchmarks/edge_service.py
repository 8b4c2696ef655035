# Copyright (c) the dermseg contributors. Apache-2.0.
"""How long from a study pushed to the edge's front door until its results are in the PACS?

    .venv/bin/python benchmarks/edge_service.py [--runs 2] [--photos 3] [--burst 50] [--model training_bundle/models]

The set-up of ``tests/test_serve.py`` (``tests/_serve_helpers.py``), with the deployed Orthanc configuration
(``deploy/orthanc/orthanc.json``) at its shipped ``StableAge`` (5 s) and the service's default poll interval (2 s): two real Orthancs, the front
door and a PACS, in a loopback-only network namespace, and ``python -m monai_app.serve`` between them with the
shipped model.  Each run pushes one study of ``--photos`` 512-px ISIC dermoscopy photos (JPEG DMS) by C-STORE
and times until the PACS holds its 4 results per photo (SEG, probability SEG, SR, overlay SC).  Then a burst:
``--burst`` studies of one photo each pushed at once, timed until every result is in the PACS, with the
service's resident memory sampled every second (the app runs in a child process per study, so the service's own
memory must stay flat) and each study checked to be done exactly once.  Needs root (``ip netns``) and Debian's
Orthanc, as the tests do; skips where they are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
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


def resident_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), in MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def burst(serve, namespace, front, pacs, service, count: int) -> dict:
    """``count`` one-photo studies pushed in one association; seconds until all results are in the PACS, the
    service's memory over the burst, and how many rounds each study took."""
    studies = [photo_study(serve, 1, seed=f"burst-{i}") for i in range(count)]
    samples = []  # (seconds since the push, MiB, studies done)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            finished = sum(r["state"] == "done" for r in service.rounds())
            samples.append((time.monotonic() - pushed, resident_mib(service.process.pid), finished))
            done.wait(1.0)

    before = resident_mib(service.process.pid)
    pushed = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    serve.c_store(namespace, front, [photo for study in studies for photo in study])
    expected = RESULTS_PER_PHOTO
    for study in studies:
        uid = study[0].StudyInstanceUID
        service.wait_for("burst results", lambda: len(serve.study_instances(pacs, uid)) >= expected, timeout=3600)
    seconds = time.monotonic() - pushed
    done.set()
    sampler.join()
    rounds = [r for r in service.rounds() if r["state"] != "skipped"]
    per_study = {}
    for r in rounds:
        per_study[r["study"]] = per_study.get(r["study"], 0) + 1
    after_tenth = [mib for _, mib, finished in samples if finished >= 10]
    return {"studies": count, "seconds": seconds, "rss_before": before, "rss_peak": max(m for _, m, _ in samples),
            "rss_after_tenth": after_tenth[0] if after_tenth else float("nan"), "rss_end": samples[-1][1],
            "extra_results": sum(len(serve.study_instances(pacs, s[0].StudyInstanceUID)) - expected for s in studies),
            "rounds": len(rounds)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--burst", type=int, default=50, help="studies of one photo pushed at once (0: no burst)")
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
        if args.burst:
            result = burst(serve, namespace, front, pacs, service, args.burst)
    finally:
        if service is not None:
            service.stop()
        front.stop()
        pacs.stop()
        namespace.delete()
    print(f"\nStableAge {stable_age} s, poll interval 2 s, model {args.model}: push to results in the PACS "
          f"{min(times):.1f}-{max(times):.1f} s over {len(times)} run(s) (target: 30 s)")
    if args.burst:
        print(f"\nA burst of {result['studies']} one-photo studies pushed at once: all results in the PACS after "
              f"{result['seconds']:.0f} s ({60 * result['studies'] / result['seconds']:.1f} studies a minute); "
              f"{result['rounds'] - args.runs} round(s) for {result['studies']} studies, {result['extra_results']} "
              f"result(s) more than expected in the PACS.\n")
        print("| service resident memory (MiB) | value |")
        print("|---|---:|")
        for label, key in (("before the burst", "rss_before"), ("once 10 studies were done", "rss_after_tenth"),
                           ("at the end", "rss_end"), ("peak", "rss_peak")):
            print(f"| {label} | {result[key]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
