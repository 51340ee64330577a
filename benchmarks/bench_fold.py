"""Batch norms folded into convolutions (``emotion.models.fusion``) against the networks
as their checkpoints hold them, side by side in one process: the default predictor
(``detector=full_frame`` with its RetinaFace finder, the default face model) on the same
decoded images, ``detect`` and ``recognize`` timed separately, the two alternating.

    .venv/bin/python benchmarks/bench_fold.py --images 512 --repeats 3 --out benchmarks/results/fold/fold.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_workspace import cpu_model  # noqa: E402  one machine description for every benchmark


def unfolded_twin(predictor, cfg: dict):
    """A copy of ``predictor`` (built from the tag config ``cfg``) whose finder and face
    model are as their files hold them."""
    import copy

    import torch

    from emotion.models.detection.retinaface import RetinaFace, load_retinaface_state
    from emotion.models.loading import build_emotion_model

    twin = copy.copy(predictor)
    twin.detector = copy.copy(predictor.detector)
    twin.detector.finder = copy.copy(predictor.detector.finder)
    net = load_retinaface_state(RetinaFace(), cfg["detector"]["finder"]["weights"]).eval().requires_grad_(False)
    twin.detector.finder.net = net.to(memory_format=torch.channels_last)
    twin.model = build_emotion_model(cfg["model"]).eval()
    return twin


def timed(predictor, decoded: dict, batch: int) -> tuple[float, float, np.ndarray]:
    n = len(decoded["source"])
    started = time.perf_counter()
    people = [predictor.detect({k: v[s:s + batch] for k, v in decoded.items()}) for s in range(0, n, batch)]
    detected = time.perf_counter()
    tables = [predictor.recognize(p) for p in people]
    recognized = time.perf_counter()
    scores = np.concatenate([np.asarray(t.column("scores").to_pylist(), dtype=np.float64) for t in tables])
    return detected - started, recognized - detected, scores


def main() -> None:
    import torch

    from emotion.predictor import build_predictor
    from tests.configs import composed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "fer2013" / "val"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = composed("tag", ["detector=full_frame", "detector.finder.device=cpu", "model.device=cpu"])
    folded = build_predictor(cfg)
    unfolded = unfolded_twin(folded, cfg)
    files = sorted(str(p) for p in Path(args.input).rglob("*.jpg"))[: args.images]
    decoded = folded.decode(files, [Path(f).read_bytes() for f in files])
    runs: dict[str, list[dict]] = {"unfolded": [], "folded": []}
    scores = {}
    for repeat in range(args.repeats + 1):  # the first round warms both up and is not counted
        for name, predictor in (("unfolded", unfolded), ("folded", folded)):
            detect_s, recognize_s, scores[name] = timed(predictor, decoded, args.batch)
            if repeat:
                runs[name].append({"detect_images_per_s": len(files) / detect_s,
                                   "recognize_faces_per_s": len(scores[name]) / recognize_s})
                print(f"repeat {repeat} {name:<9} detect {len(files) / detect_s:7.1f} images/s  "
                      f"recognize {len(scores[name]) / recognize_s:7.1f} faces/s", flush=True)
    median = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
    difference = float(np.max(np.abs(scores["folded"] - scores["unfolded"])))
    print(f"median: {json.dumps(median)}; largest score difference {difference:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"cpu": cpu_model(), "threads": args.threads}, "images": len(files),
                                    "batch": args.batch, "runs": runs, "median": median,
                                    "largest_score_difference": difference}, indent=2))


if __name__ == "__main__":
    main()
