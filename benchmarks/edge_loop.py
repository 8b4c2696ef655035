"""The whole edge loop, measured: deploy, route, review in the PACS, fine-tune, redeploy, and what it bought.

    .venv/bin/python benchmarks/edge_loop.py [--edge-cases 100] [--test-cases 100] [--isic-train 300]
        [--epochs 2] [--work runs/edge_loop]

1. The deployed model (``training_bundle/models/``: ``model.pt``, served from its exports as the app serves them)
   runs in the app with an edge store over ``--edge-cases`` photos it never trained on: the first images of the bundle's test split, from
   the 512-px copy (a resolution the model never saw), given to the app as plain JPEG photos.  The app's
   ``DERMSEG_REVIEW_SEND_TO`` is a real Orthanc with DICOMweb, the reviewers' PACS (Debian's Orthanc in a
   loopback-only network namespace, as the tests run it: ``tests/_orthanc.py``), so each ``review`` case's source
   (the app's VL Photographic wrapper of the JPEG), its SEG marked for review and its overlay land there.
2. The confidence routes them; "the institution" corrects every ``review`` case as a reviewer does in a viewer:
   it finds the series marked for review in the PACS (QIDO-RS), fetches the source image each one references
   (WADO-RS), draws the ground truth as an OHIF-style DICOM-SEG (one segment "Segment 1", Tissue, Manufacturer
   OHIF; highdicom, by ``tests/_edge_helpers.write_seg``, the tests' builder) and stores it back by STOW-RS.
   ``python -m monai_app.edge pull-corrections URL`` brings the SEGs into the edge store; the run stops unless
   it imported one per review case.
3. The bundle fine-tunes the deployed weights (``--pretrained_checkpoint``), with the modern recipe they were
   trained with, on ``--isic-train`` ISIC training images plus the edge datalist, and exports the next model version, which is installed at the edge.
   A control arm fine-tunes the same way on the ISIC images alone, so that what the edge samples bought is
   separated from what more training bought.
4. Everything is scored by the bundle's own evaluation (``train.json`` + ``train_recipe.json`` + ``evaluate.json``) on ``--test-cases``
   further test-split images (disjoint from the edge set), and the routing by the per-image Jaccard of the
   deployed model on the edge set.

Needs ``../shared/data`` (the ISIC copies), and root and Debian's Orthanc with its DICOMweb plugin
(``tests/system_deps.sh``), as the PACS tests do.  CPU cost with the defaults: about 40 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the app's modules, and the tests' Orthanc harness and SEG builder
# Reading masks (networks.preprocessing) loads MONAI and with it Holoscan, which warns about this process's stack;
# no Holoscan graph runs here: the app runs in child processes, with the 32 MiB stack of run()
warnings.filterwarnings("ignore", message=r"Current stack size .* is below the recommended minimum")
BUNDLE = REPO / "training_bundle"
SHARED = REPO.parent / "shared" / "data"
FAILURE_JACCARD = 0.65
# the shipped model was trained with the modern recipe, whose layer also sets its network (colour constancy):
# fine-tuning, scoring and exporting it keep that layer (training_bundle/docs/README.md)
SHIPPED_RECIPE = ["train.json", "train_recipe.json"]
SERVING_SIZE = "[[1,[256,256]]]"  # the recipe's progressive resizing is for training from scratch


def run(args: List[str], env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    command = ["bash", "-c", 'ulimit -s 32768 2>/dev/null; exec "$0" "$@"', *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True)
    if result.returncode not in (0,):
        raise SystemExit(f"failed ({result.returncode}): {' '.join(map(str, args))}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def config_files(*names: str) -> str:
    """The bundle's configs ``names``, layered in this order, as ``monai.bundle``'s ``--config_file`` takes a list."""
    return repr([str(BUNDLE / "configs" / name) for name in names])


def bundle(configs: List[str], **overrides) -> None:
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_files(*configs), "--bundle_root", BUNDLE]
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    run(args)


def evaluate(checkpoint: Path, datalist: Path, out: Path) -> Dict[str, float]:
    bundle([*SHIPPED_RECIPE, "evaluate.json"], checkpoint=str(checkpoint), datalist_file=str(datalist),
           dataset_dir=str(SHARED / "isic2018_task1_512"), output_dir=str(out), train_log=str(out / "none.csv"))
    return json.loads((out / "metrics.json").read_text())["metrics"]


def per_image_jaccard(eval_dir: Path) -> Dict[str, float]:
    with open(eval_dir / "per_image.csv") as f:
        return {Path(row["image"]).stem: float(row["jaccard"]) for row in csv.DictReader(f)}


def absolute(entries: List[dict], root: Path) -> List[dict]:
    return [{"image": str(root / e["image"]), "label": str(root / e["label"])} for e in entries]


@contextmanager
def review_pacs(folder: Path) -> Iterator[Tuple[object, object]]:
    """The reviewers' PACS: an Orthanc with DICOMweb in a loopback-only network namespace, yielded with the
    namespace (the app and the edge commands run inside it); stopped by its process id and the namespace deleted
    at the end, whatever happens."""
    from _orthanc import HarnessError, NetworkNamespace, Orthanc

    try:
        namespace = NetworkNamespace.create()
    except HarnessError as error:
        raise SystemExit(f"edge_loop: the review PACS cannot run: {error}") from None
    pacs = Orthanc(namespace, folder, aet="REVIEWPACS")
    try:
        try:
            pacs.start()
        except HarnessError as error:
            raise SystemExit(f"edge_loop: the review PACS cannot run: {error}") from None
        yield namespace, pacs
    finally:
        pacs.stop()
        namespace.delete()


def correct_in_the_viewer(namespace, pacs, truth: Dict[str, str], folder: Path) -> List[str]:
    """What a reviewer does in OHIF, with the ground truth as the reviewer's eye: every SEG series marked for review
    in the PACS, the source image its SEG references, a corrected SEG of that source stored back by STOW-RS.
    ``truth`` maps a source SOP Instance UID to its ground-truth mask file.  Returns the corrected sources' UIDs."""
    from dicomweb_client import DICOMwebClient

    from _edge_helpers import write_seg
    from networks.preprocessing import read_mask
    from operators.dicom_outputs import REVIEW_SERIES_DESCRIPTION

    folder.mkdir()
    client = DICOMwebClient(pacs.dicomweb_url)
    corrected = []
    with namespace.entered():  # the PACS listens inside the namespace only
        series = client.search_for_series(search_filters={"Modality": "SEG"}, fields=["SeriesDescription"],
                                          get_remaining=True)
        for item in series:
            if (item.get("0008103E", {}).get("Value") or [None])[0] != REVIEW_SERIES_DESCRIPTION:
                continue  # only the app's SEGs marked for review wait for a reviewer
            study, series_uid = item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]
            for proposed in client.retrieve_series(study, series_uid):
                reference = proposed.ReferencedSeriesSequence[0]
                source_uid = reference.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
                source = client.retrieve_instance(study, reference.SeriesInstanceUID, source_uid)
                source_path = folder / f"{source_uid}.dcm"
                source.save_as(source_path, enforce_file_format=True)
                seg = write_seg(folder / f"{source_uid}.seg.dcm", source_path, read_mask(truth[source_uid]),
                                label="Segment 1", manufacturer="OHIF")
                client.store_instances([seg])
                corrected.append(source_uid)
    return corrected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge-cases", type=int, default=100)
    parser.add_argument("--test-cases", type=int, default=100)
    parser.add_argument("--isic-train", type=int, default=300)
    parser.add_argument("--validation", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "edge_loop")
    args = parser.parse_args()
    deployed_pt = BUNDLE / "models" / "model.pt"
    for needed in (SHARED / "isic2018_task1_512", deployed_pt, BUNDLE / "models" / "model.onnx"):
        if not needed.exists():
            raise SystemExit(f"edge_loop: {needed} is missing (needs ../shared/data and the bundle's trained, exported model)")
    start = time.perf_counter()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    split = json.loads((BUNDLE / "configs" / "datalist.json").read_text())
    data512, data256 = SHARED / "isic2018_task1_512", SHARED / "isic2018_task1_256"
    edge_in = absolute(split["testing"][: args.edge_cases], data512)
    edge_test = absolute(split["testing"][args.edge_cases : args.edge_cases + args.test_cases], data512)
    (work / "edge_test.json").write_text(json.dumps({"testing": edge_test}))
    (work / "edge_in.json").write_text(json.dumps({"testing": edge_in}))

    photos = work / "photos"
    photos.mkdir()
    for entry in edge_in:
        os.symlink(entry["image"], photos / Path(entry["image"]).name)
    store = work / "store"
    with review_pacs(work / "pacs") as (namespace, pacs):
        # 1. the app at the edge, plain photos in, an edge store behind it, review cases sent to the reviewers' PACS
        run(namespace.command([sys.executable, "-m", "monai_app", "-i", photos, "-o", work / "app_out",
                               "-m", BUNDLE / "models"]),
            env={"DERMSEG_EDGE_STORE": str(store), "DERMSEG_REVIEW_SEND_TO": pacs.dicomweb_url})
        results = json.loads((work / "app_out" / "results.json").read_text())
        # a failed send does not fail the app's run (the files stay in OUT): the transfer records say
        unsent = [t for t in results.get("transfers", []) if t.get("status") != "sent"]
        if unsent:
            raise SystemExit(f"edge_loop: {len(unsent)} review transfer(s) to the PACS failed: {unsent[:3]}")
        cases = [c for c in results["cases"] if c["status"] == "ok"]
        route = {Path(c["source_file"]).stem: c["route"] for c in cases}
        reviewed = [k for k, r in route.items() if r == "review"]

        # 2. the institution corrects the review cases in its viewer, and the edge pulls the SEGs from the PACS
        truth_by_photo = {Path(e["image"]).stem: e["label"] for e in edge_in}
        truth = {c["source_sop_instance_uid"]: truth_by_photo[Path(c["source_file"]).stem] for c in cases}
        corrected = correct_in_the_viewer(namespace, pacs, truth, work / "viewer")
        pulled = run(namespace.command([sys.executable, "-m", "monai_app.edge", "--store", store,
                                        "pull-corrections", pacs.dicomweb_url]))
        summary = json.loads(pulled.stdout.strip().splitlines()[-1])
        if summary.get("imported") != len(reviewed) or len(corrected) != len(reviewed):
            raise SystemExit(f"edge_loop: {len(reviewed)} review case(s), {len(corrected)} corrected in the PACS, "
                             f"pull-corrections: {summary}\n{pulled.stdout[-2000:]}\n{pulled.stderr[-2000:]}")
        found = [line for line in pulled.stdout.splitlines() if "SEG(s) found" in line]
        print(f"review through the PACS: {len(reviewed)} review case(s), {len(corrected)} corrected in the viewer; "
              f"pull-corrections: {'; '.join(found)}; {summary}", flush=True)
    run([sys.executable, "-m", "monai_app.edge", "--store", store, "datalist", work / "edge_datalist.json"])
    n_edge = len(json.loads((work / "edge_datalist.json").read_text())["training"])

    # 3. the cloud fine-tunes from the deployed weights: with the edge samples, and a control without them
    isic = {"training": absolute(split["training"][: args.isic_train], data256),
            "validation": absolute(split["validation"][: args.validation], data256)}
    (work / "isic_subset.json").write_text(json.dumps(isic))
    arms = {}
    for arm, extra in (("with edge samples", [str(work / "edge_datalist.json")]), ("ISIC only (control)", [])):
        folder = work / ("finetune_edge" if extra else "finetune_control")
        bundle(SHIPPED_RECIPE, datalist_file=str(work / "isic_subset.json"), dataset_dir=str(data256), extra_datalists=extra,
               pretrained_checkpoint=str(deployed_pt), learning_rate=args.learning_rate, epochs=args.epochs,
               train_sizes=SERVING_SIZE,
               ckpt_dir=str(folder / "models"), output_dir=str(folder / "eval"), resume=False)
        arms[arm] = folder / "models" / "model.pt"

    # the next model version, exported and installed at the edge
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    metadata["version"] = f"{metadata['version']}+edge1"
    metadata["changelog"][metadata["version"]] = f"fine-tuned on {args.isic_train} ISIC images and {n_edge} edge samples"
    (work / "metadata_next.json").write_text(json.dumps(metadata, indent=2))
    next_models = work / "next_models"  # as the bundle's models/ folder: TorchScript, ONNX and its int8 quantization
    next_models.mkdir(exist_ok=True)
    run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", next_models / "model.ts",
         "--ckpt_file", arms["with edge samples"], "--meta_file", work / "metadata_next.json",
         "--config_file", config_files(*SHIPPED_RECIPE, "inference.json"), "--bundle_root", BUNDLE])
    run([sys.executable, BUNDLE / "scripts" / "export_onnx.py", "--bundle_root", BUNDLE, "--filepath", next_models / "model.onnx",
         "--ckpt_file", arms["with edge samples"], "--meta_file", work / "metadata_next.json",
         "--config_file", *(f"configs/{name}" for name in (*SHIPPED_RECIPE, "inference.json"))])
    run([sys.executable, BUNDLE / "scripts" / "quantize_onnx.py", "--bundle_root", BUNDLE,
         "--onnx_file", next_models / "model.onnx", "--filepath", next_models / "model_int8.onnx"])
    run([sys.executable, "-m", "monai_app.edge", "--store", store, "install-model", next_models])
    status = json.loads(run([sys.executable, "-m", "monai_app.edge", "--store", store, "status"]).stdout)

    # 4. scores
    routing_eval = work / "eval_deployed_edge_in"
    evaluate(deployed_pt, work / "edge_in.json", routing_eval)
    jaccard = per_image_jaccard(routing_eval)
    failures = [k for k, j in jaccard.items() if j < FAILURE_JACCARD]
    caught = [k for k in failures if route.get(k) == "review"]
    scores = {"deployed model": evaluate(deployed_pt, work / "edge_test.json", work / "eval_deployed")}
    for arm, checkpoint in arms.items():
        scores[f"fine-tuned, {arm}"] = evaluate(checkpoint, work / "edge_test.json", work / f"eval_{checkpoint.parent.parent.name}")

    print(f"\nEdge loop: {len(cases)} edge photos (512-px copy, test split), {len(edge_test)} disjoint edge-test photos,"
          f" fine-tuning {args.epochs} epoch(s) at lr {args.learning_rate} on {args.isic_train} ISIC images\n")
    print("| routing on the edge set | value |")
    print("|---|---:|")
    print(f"| sent to review | {len(reviewed)} of {len(route)} ({100 * len(reviewed) / max(len(route), 1):.0f}%) |")
    print(f"| failures (Jaccard < {FAILURE_JACCARD}) | {len(failures)} |")
    print(f"| failures caught by review | {len(caught)} of {len(failures)} ({100 * len(caught) / max(len(failures), 1):.0f}%) |")
    print(f"| corrections imported | {status['corrected']} |")
    print(f"| accepted samples | {status['accepted']} |")
    print(f"| model version installed at the edge | {status['model_version']} |")
    print("\n| model, scored on the edge-test set | mean Jaccard | thresholded Jaccard | Dice | accuracy |")
    print("|---|---:|---:|---:|---:|")
    for name, m in scores.items():
        print(f"| {name} | {m['mean_jaccard']:.4f} | {m['mean_thresholded_jaccard']:.4f} | {m['mean_dice']:.4f} | {m['mean_accuracy']:.4f} |")
    print(f"\n{time.perf_counter() - start:.0f} s in all; work folder {work}")


if __name__ == "__main__":
    main()
