"""What does the workspace (competition + coordination) cost inside CocoER's forward?

Times the joint model's inference forward at batch 64 with the workspace on and off
(interleaved repetitions, median), and the workspace step alone on the same batch.
Writes a JSON record next to this file (or --out) and prints a table.

    .venv/bin/python benchmarks/bench_workspace.py                      # CPU, defaults
    .venv/bin/python benchmarks/bench_workspace.py --device cuda --reps 20

Backbones are mobilenet_v2 (random weights: timing does not depend on their values, and
the run then needs no weight packages or text encoder).

Besides wall time, each timing records the process's CPU time (all threads): on a machine
shared with other jobs, wall time swings with their load while CPU time mostly measures
the work done, so the CPU-time ratio is the steadier estimate of the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from emotion.labels import EMOTIC_CATEGORIES
from emotion.models.joint.cocoer import CocoER
from emotion.models.protocol import LEVELS
from emotion.models.settings import yaml_config


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads)."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "stdev_s": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }


def measure_workspace(backbone: str, batch: int, size: int, reps: int, ws_reps: int,
                      device: torch.device) -> tuple[dict, dict, dict, Any]:
    """Time CocoER's forward with the workspace on and off, and the workspace step alone.

    Returns (wall samples {"on", "off"}, CPU samples {"on", "off", "workspace_step"},
    workspace-step wall samples, the model).
    """
    torch.manual_seed(0)
    model = CocoER(yaml_config("cocoer", {
        "labels": list(EMOTIC_CATEGORIES), "multi_label": True, "backbone": backbone,
        "vocab_backbone": backbone, "pretrained": False, "input_size": size,
    })).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    x = {m: torch.randn(batch, 3, size, size, generator=gen).to(device) for m in LEVELS}

    def forward(workspace_on: bool):
        model.use_workspace = workspace_on
        return model(**x)

    samples: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": [], "workspace_step": []}
    with torch.inference_mode():
        forward(True), forward(False)  # warm-up (allocator, kernels)
        for rep in range(reps):
            # Alternate which setting goes first so drift on a shared machine hits both.
            order = ("on", "off") if rep % 2 == 0 else ("off", "on")
            for setting in order:
                wall, used = timed(lambda s=setting: forward(s == "on"), device)
                samples[setting].append(wall)
                cpu[setting].append(used)

        # The workspace step alone, on this batch's real hidden vectors and logits.
        model.use_workspace = True
        tokens = {m: model.patch_embed[m](model.backbones[m](x[m])) for m in LEVELS}
        z = model.encoder(tokens)
        heads = {m: model.heads[m](z[m]) for m in LEVELS}
        hidden = torch.stack([heads[m]["hidden"] for m in LEVELS], 1)
        logits = torch.stack([heads[m]["logits"] for m in LEVELS], 1)
        weight = torch.stack([model.heads[m].last.weight for m in LEVELS])
        bias = torch.stack([model.heads[m].last.bias for m in LEVELS])
        pseudo = model.vocabulary(x["context"])["pseudo_label"]
        model.workspace(hidden, logits, weight, bias, pseudo)  # warm-up
        ws_samples = []
        for _ in range(ws_reps):
            wall, used = timed(lambda: model.workspace(hidden, logits, weight, bias, pseudo), device)
            ws_samples.append(wall)
            cpu["workspace_step"].append(used)
    return samples, cpu, ws_samples, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--reps", type=int, default=5, help="timed forwards per setting (after 1 warm-up)")
    parser.add_argument("--ws-reps", type=int, default=50, help="timed calls of the workspace step alone")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads; 1 by default: see benchmarks/README.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("bench_workspace_results.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    samples, cpu, ws_samples, model = measure_workspace(args.backbone, args.batch, args.size, args.reps, args.ws_reps,
                                                        device)

    on, off, ws = summarise(samples["on"]), summarise(samples["off"]), summarise(ws_samples)
    cpu_on, cpu_off, cpu_ws = summarise(cpu["on"]), summarise(cpu["off"]), summarise(cpu["workspace_step"])
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "command": "python benchmarks/bench_workspace.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {
            "nproc": os.cpu_count(), "cpu_model": cpu_model(), "torch": torch.__version__, "threads": args.threads,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        },
        "config": {"batch": args.batch, "input_size": args.size, "backbone": args.backbone,
                   "labels": len(EMOTIC_CATEGORIES), "d_h": model.config["d_h"], "d": model.config["d"],
                   "n_blocks": model.config["n_blocks"], "n_heads": model.config["n_heads"]},
        "forward_workspace_on": on,
        "forward_workspace_off": off,
        "workspace_step_alone": ws,
        "overhead_on_vs_off": on["median_s"] / off["median_s"] - 1.0,
        "workspace_step_share_of_forward": ws["median_s"] / off["median_s"],
        "cpu_time": {"forward_workspace_on": cpu_on, "forward_workspace_off": cpu_off, "workspace_step_alone": cpu_ws,
                     "overhead_on_vs_off": cpu_on["median_s"] / cpu_off["median_s"] - 1.0,
                     "workspace_step_share_of_forward": cpu_ws["median_s"] / cpu_off["median_s"]},
        "load_average_after": load,
        "samples": {"on": samples["on"], "off": samples["off"], "workspace_step": ws_samples},
        "cpu_samples": cpu,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"CocoER forward, batch {args.batch}, input {args.size}, {args.backbone}, {result['machine']['device']}, "
          f"{args.threads} threads, {args.reps} reps (median; min-max)")
    print(f"{'setting':<22}{'wall median':>13}{'min':>11}{'max':>11}{'cpu median':>13}")
    rows = (("workspace on", on, cpu_on), ("workspace off", off, cpu_off), ("workspace step alone", ws, cpu_ws))
    for name, s, c in rows:
        print(f"{name:<22}{s['median_s'] * 1e3:>11.1f}ms{s['min_s'] * 1e3:>9.1f}ms{s['max_s'] * 1e3:>9.1f}ms"
              f"{c['median_s'] * 1e3:>11.1f}ms")
    print(f"on vs off: wall {result['overhead_on_vs_off'] * 100:+.2f}%, "
          f"cpu {result['cpu_time']['overhead_on_vs_off'] * 100:+.2f}%"
          f"   workspace step / forward(off): wall {result['workspace_step_share_of_forward'] * 100:.3f}%, "
          f"cpu {result['cpu_time']['workspace_step_share_of_forward'] * 100:.3f}%   load avg {load}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
