"""One table on a scenes_v2 split: each pipeline tags the same images through the library
predictor (no Ray), and every labelled person is scored by the DSCT protocol.

    .venv/bin/python benchmarks/scenes_v2_table.py --data outputs/data/scenes_v2 --split test \
        --pipeline two_stage=cocoer:outputs/train/cocoer_scenes_v2/best.ckpt \
        --pipeline dsct=dsct:outputs/train/dsct_scenes_v2/best.ckpt

``NAME=KIND:CHECKPOINT``: ``cocoer`` is the two-stage pipeline (RetinaFace finds faces,
body boxes are derived from them, CocoER reads head, body and context crops); its rows
also give each CocoER level alone (the level's own classifier scores, same boxes).
``dsct`` is the single-stage model (its own person boxes). Protocol
(``emotion.models.dsct.evaluation``): each ground-truth person takes the predicted body
box with the highest IoU in its image and that row's emotion scores; mAP over the 6
categories and top-1 accuracy (scenes_v2 has one true category per person) over all
people, a person no box overlaps counting as wrong; AP50 of the body boxes ranked by the
detector's (or DSCT's person) score. Each pipeline runs with a low detection threshold
(``--min-score``) so AP50 sees the whole ranking. Images/s is the predictor alone on
pre-read bytes (decode, detect, recognize), batch ``--batch``, this machine's threads.
The evaluation is ``emotion.evaluation.evaluate_scenes`` (what ``emotion eval
protocol=scenes`` runs). Writes JSON (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def build(kind: str, checkpoint: str, min_score: float):
    from emotion.predictor import build_predictor

    model = {"name": "checkpoint", "checkpoint": checkpoint, "device": "cpu"}
    if kind == "dsct":
        model["score_threshold"] = min_score
    detector = {"name": "retinaface", "weights": "retinaface_mobilenet0.25", "score_threshold": min_score,
                "nms_iou": 0.4, "max_size": 640, "upscale_size": 320, "top_k": 750, "device": "cpu",
                "head_expand": 1.25}
    cfg = {"model": model, "detector": detector,
           "predictor": {"threshold": 0.5, "max_people": 20, "max_image_side": 960, "crops": "auto",
                         "align_faces": True, "decode": "auto", "precision": "fp32",
                         "score_weights": None}}
    return build_predictor(cfg)


def parameters(predictor) -> int:
    total = 0
    for part in (getattr(predictor, "detector", None), getattr(predictor, "model", None)):
        if part is not None and hasattr(part, "parameters"):
            total += sum(p.numel() for p in part.parameters())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a scenes_v2 root (emotion data scenes_v2 root=...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pipeline", action="append", required=True, help="NAME=cocoer|dsct:CHECKPOINT")
    parser.add_argument("--min-score", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scenes_v2_table.json"))
    args = parser.parse_args()

    from emotion.evaluation import evaluate_scenes
    from emotion.config_files import group_option
    from emotion.settings import SyntheticData

    data = SyntheticData.model_validate({**group_option("data", "synthetic"), "root": args.data})
    rows = []
    for spec in args.pipeline:
        name, _, rest = spec.partition("=")
        kind, _, checkpoint = rest.partition(":")
        if kind not in ("cocoer", "dsct") or not checkpoint:
            parser.error(f"--pipeline {spec!r}: expected NAME=cocoer:CHECKPOINT or NAME=dsct:CHECKPOINT")
        predictor = build(kind, checkpoint, args.min_score)
        started = time.perf_counter()
        report = evaluate_scenes(predictor, data, args.split, batch_size=args.batch, limit=args.limit, levels=True)
        wall = round(time.perf_counter() - started, 1)
        print(f"{name}: scored {report['images']} images in {wall} s", flush=True)
        common = {"kind": kind, "checkpoint": checkpoint, "parameters": parameters(predictor),
                  "images_per_s": report["images_per_second"], "images": report["images"], "eval_wall_s": wall}
        for label, part in [(name, report)] + [(f"{name}: {level} level alone", level_report)
                                                for level, level_report in report.get("level_reports", {}).items()]:
            rows.append({"pipeline": label, **common, "mAP": part["mAP"], "accuracy": part["top1_accuracy"],
                         "ap50": part["ap50"], "unmatched": part["unmatched"], "people": part["n"]})
        if len(report.get("level_reports", {})) == 1:  # a one-level model: its level row repeats it
            rows.pop()
    result = {"data": args.data, "split": args.split, "min_score": args.min_score,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("| pipeline | emotion mAP | accuracy | subject-box AP50 | parameters | images/s | eval wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pipeline']} | {r['mAP']:.4f} | {r['accuracy']:.4f} | {r['ap50']:.4f} | "
              f"{r['parameters'] / 1e6:.2f} M | {r['images_per_s']:.1f} | {r['eval_wall_s']:.0f} |")


if __name__ == "__main__":
    main()
