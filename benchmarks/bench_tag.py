"""Tagging throughput: the Ray Data pipeline against a plain loop over the same predictor
and images, side by side in one run.

    .venv/bin/python benchmarks/bench_tag.py --images 300 [--repeats 3] [--input DIR] [--override KEY=VALUE]

Input defaults to FER2013 val (../shared/data/fer2013/val), first N files sorted. Each
repeat runs the loop, then the pipeline on a fresh local Ray (``ray.shutdown`` between
repeats, so every pipeline pays its whole start-up); the table gives each repeat and the
median. The pipeline's rate counts its actors' start-up (each builds the predictor) but
not ``ray.init``; the loop's rate is printed without and with building its predictor.
Writes bench_tag_results.json next to this file (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from bench_workspace import cpu_model  # one machine description for every benchmark

ROOT = Path(__file__).resolve().parents[1]


def run_loop(cfg: dict, sources: list[str], batch: int) -> dict[str, float]:
    """The plain loop: one process, the tag config's predictor, read + decode + predict."""
    from emotion import storage
    from emotion.predictor import build_predictor

    build_started = time.perf_counter()
    predictor = build_predictor(cfg)  # timed too: the pipeline's actors load the same models
    build_seconds = time.perf_counter() - build_started
    started = time.perf_counter()
    for i in range(0, len(sources), batch):
        chunk = sources[i:i + batch]
        predictor(predictor.decode(chunk, [storage.read_bytes(s) for s in chunk], cfg["max_pixels"]))
    seconds = time.perf_counter() - started
    return {"loop_images_per_s": len(sources) / seconds, "loop_build_s": build_seconds,
            "loop_images_per_s_including_build": len(sources) / (seconds + build_seconds)}


def run_pipeline(cfg: dict, sources: list[str]) -> dict[str, float]:
    """The tagging job on a fresh local Ray, into a temporary output."""
    import ray

    from emotion.pipelines.tagging import run_tagging

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.csv"
        manifest.write_text("path\n" + "\n".join(sources) + "\n")
        summary = run_tagging({**cfg, "input": str(manifest), "output": f"{tmp}/out", "progress_every_s": 0})
    ray.shutdown()
    return {"ray_images_per_s": summary.images_per_second,
            "ray_steady_images_per_s": summary.steady_images_per_second,
            "ray_first_output_s": summary.first_output_seconds,
            "ray_wall_s_including_startup": summary.seconds,
            # The whole job, ray.init and the driver's preparation included.
            "ray_images_per_s_whole_job": len(sources) / summary.seconds}


def with_ratios(run: dict[str, float]) -> dict[str, float]:
    run = {k: round(v, 2) for k, v in run.items()}
    run["ratio"] = round(run["ray_images_per_s"] / run["loop_images_per_s"], 3)
    run["ratio_including_loop_build"] = round(run["ray_images_per_s"] / run["loop_images_per_s_including_build"], 3)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3,
                        help="loop + pipeline pairs, run alternately (one machine's noise hits both runners)")
    parser.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "fer2013" / "val"))
    parser.add_argument("--detector", default="retinaface")
    parser.add_argument("--loop-batch", type=int, default=4)
    parser.add_argument("--loop-threads", type=int, default=1,
                        help="torch threads of the plain loop (the pipeline's actors use 1 each)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_tag_results.json"))
    parser.add_argument("--override", action="append", default=[],
                        help="a tag config override for both runners, e.g. model=fer or stages.fuse=true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray that only this process uses

    import torch
    from omegaconf import OmegaConf

    from emotion.tagging.inputs import list_sources

    sources = list_sources(args.input)[: args.images]
    with initialize_config_dir(config_dir=str(ROOT / "jobs" / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="tag", overrides=[f"detector={args.detector}",
                                                                           *args.override]), resolve=True)
    torch.set_num_threads(args.loop_threads)

    runs: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        run = with_ratios({**run_loop(cfg, sources, args.loop_batch), **run_pipeline(cfg, sources)})
        runs.append(run)
        print(f"repeat {repeat + 1}/{args.repeats}: loop {run['loop_images_per_s']:.2f} images/s, "
              f"Ray {run['ray_images_per_s']:.2f} ({run['ratio']:.2f}x; first rows after "
              f"{run['ray_first_output_s']:.1f} s, then {run['ray_steady_images_per_s']:.1f} images/s)", flush=True)
    median: dict[str, Any] = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}

    results = {
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__},
        "images": len(sources), "detector": args.detector, "overrides": args.override,
        "loop_threads": args.loop_threads, "repeats": args.repeats,
        "median": median, "runs": runs,
    }
    print(f"\nmedian of {args.repeats} (loop, then pipeline, alternately), {len(sources)} images")
    print(f"{'runner':<28}{'images/s':>10}")
    print(f"{'plain loop (1 process)':<28}{median['loop_images_per_s']:>10.2f}")
    print(f"{'Ray Data pipeline':<28}{median['ray_images_per_s']:>10.2f}   (actor start-up included)")
    print(f"{'Ray Data, after 1st output':<28}{median['ray_steady_images_per_s']:>10.2f}   "
          f"(first rows after {median['ray_first_output_s']:.1f} s)")
    print(f"{'plain loop incl. model load':<28}{median['loop_images_per_s_including_build']:>10.2f}")
    print(f"{'Ray, whole job':<28}{median['ray_images_per_s_whole_job']:>10.2f}   "
          f"(ray.init and the driver's preparation included: {median['ray_wall_s_including_startup']:.1f} s)")
    print(f"ratio Ray / loop: {median['ratio']:.2f} (median of the repeats' ratios; with the loop's model "
          f"load counted: {median['ratio_including_loop_build']:.2f})")
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
