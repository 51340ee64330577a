"""Tagging throughput: the Ray Data pipeline against a plain loop over the same predictor
and images, side by side in one run.

    .venv/bin/python benchmarks/bench_tag.py --images 200 [--input DIR] [--detector retinaface]

Input defaults to FER2013 val (../shared/data/fer2013/val), first N files sorted. The
pipeline's rate counts its actors' start-up (each builds the predictor); the loop's rate
is printed without and with building its predictor.
Prints a table and writes bench_tag_results.json next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from bench_workspace import cpu_model  # one machine description for every benchmark

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "fer2013" / "val"))
    parser.add_argument("--detector", default="retinaface")
    parser.add_argument("--loop-batch", type=int, default=4)
    parser.add_argument("--loop-threads", type=int, default=1,
                        help="torch threads of the plain loop (the pipeline's actors use 1 each)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_tag_results.json"))
    parser.add_argument("--override", action="append", default=[],
                        help="a tag config override for both runners, e.g. model=fer or stages.fuse=true")
    args = parser.parse_args()

    import torch
    from omegaconf import OmegaConf

    from emotion import storage
    from emotion.pipelines.tagging import list_sources, run_tagging
    from emotion.predictor import build_predictor

    sources = list_sources(args.input)[: args.images]
    with initialize_config_dir(config_dir=str(ROOT / "jobs" / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="tag", overrides=[f"detector={args.detector}",
                                                                           *args.override]), resolve=True)

    # Plain loop: one process, the same predictor and batch size as the detect stage.
    torch.set_num_threads(args.loop_threads)
    build_started = time.perf_counter()
    predictor = build_predictor(cfg)  # timed too: the pipeline's actors load the same models
    build_seconds = time.perf_counter() - build_started
    started = time.perf_counter()
    for i in range(0, len(sources), args.loop_batch):
        chunk = sources[i:i + args.loop_batch]
        predictor(predictor.decode(chunk, [storage.read_bytes(s) for s in chunk], cfg["max_pixels"]))
    loop_seconds = time.perf_counter() - started

    # Ray Data pipeline: local Ray, default pools (start-up excluded from its rate).
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "manifest.csv"
        manifest.write_text("path\n" + "\n".join(sources) + "\n")
        summary = run_tagging({**cfg, "input": str(manifest), "output": f"{tmp}/out", "progress_every_s": 0})

    results = {
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "torch": torch.__version__},
        "images": len(sources), "detector": args.detector, "overrides": args.override,
        "loop_threads": args.loop_threads,
        "loop_images_per_s": round(len(sources) / loop_seconds, 2),
        "loop_build_s": round(build_seconds, 2),
        "loop_images_per_s_including_build": round(len(sources) / (loop_seconds + build_seconds), 2),
        "ray_images_per_s": round(summary.images_per_second, 2),
        "ray_steady_images_per_s": round(summary.steady_images_per_second, 2),
        "ray_first_output_s": round(summary.first_output_seconds, 2),
        "ray_wall_s_including_startup": round(summary.seconds, 1),
        # The whole job, ray.init and the driver's preparation included.
        "ray_images_per_s_whole_job": round(len(sources) / summary.seconds, 2),
    }
    print(f"{'runner':<28}{'images/s':>10}")
    print(f"{'plain loop (1 process)':<28}{results['loop_images_per_s']:>10.2f}")
    print(f"{'Ray Data pipeline':<28}{results['ray_images_per_s']:>10.2f}   (actor start-up included)")
    print(f"{'Ray Data, after 1st output':<28}{results['ray_steady_images_per_s']:>10.2f}   "
          f"(first rows after {results['ray_first_output_s']:.1f} s)")
    print(f"{'plain loop incl. model load':<28}{results['loop_images_per_s_including_build']:>10.2f}   "
          f"(building its predictor took {build_seconds:.1f} s)")
    print(f"{'Ray, whole job':<28}{results['ray_images_per_s_whole_job']:>10.2f}   "
          f"(ray.init and the driver's preparation included: {summary.seconds:.1f} s)")
    print(f"ratio Ray / loop: {results['ray_images_per_s'] / results['loop_images_per_s']:.2f} "
          f"(steady: {results['ray_steady_images_per_s'] / results['loop_images_per_s']:.2f}; both including "
          f"their model loading: {results['ray_images_per_s'] / results['loop_images_per_s_including_build']:.2f})")
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
