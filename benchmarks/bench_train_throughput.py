"""Training throughput of ``face_cnn`` (forward + backward + AdamW step) per input size.

    python benchmarks/bench_train_throughput.py --sizes 48 64 96 --threads 2

Prints one JSON line per size: images/s for a training step and for inference, on
random inputs (the data pipeline is not included). Used to pick the input size of
``experiment=fer_mobilenet`` (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def measure(size: int, batch: int, steps: int, backbone: str, pretrained: bool) -> dict:
    from emotion.models.registry import build_model
    from emotion.models.settings import yaml_config

    model = build_model("face_cnn", yaml_config("face_cnn", {"labels": [str(i) for i in range(7)], "backbone": backbone,
                                                             "pretrained": pretrained, "input_size": size}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 7, (batch,))
    model.train()
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train_rate = steps * batch / (time.perf_counter() - started)
    model.eval()
    with torch.inference_mode():
        model(x)
        started = time.perf_counter()
        for _ in range(steps):
            model(x)
        infer_rate = steps * batch / (time.perf_counter() - started)
    return {"input_size": size, "batch": batch, "train_images_per_s": round(train_rate, 1),
            "inference_images_per_s": round(infer_rate, 1), "threads": torch.get_num_threads(), "backbone": backbone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 96])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--random-init", action="store_true", help="skip loading the ImageNet weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size in args.sizes:
        print(json.dumps(measure(size, args.batch, args.steps, args.backbone, not args.random_init)), flush=True)


if __name__ == "__main__":
    main()
