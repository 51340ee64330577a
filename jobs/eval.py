"""Evaluation job: ``emotion eval model=fer data=image_folder data.root=PATH``.

Prints one JSON line with at least ``accuracy`` and ``per_class``.
"""

from __future__ import annotations

import json
import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from emotion import storage
from emotion.evaluation import evaluate_image_folder
from emotion.predictor import build_predictor

log = logging.getLogger("emotion.eval")


def run(cfg: DictConfig) -> dict:
    plain = OmegaConf.to_container(cfg, resolve=True)
    predictor = build_predictor(plain)
    data = plain["data"]
    if data["format"] != "image_folder":
        raise ValueError(f"data.format={data['format']!r}: this command evaluates image folders here")
    report = evaluate_image_folder(predictor, data["root"], data.get("split"), plain.get("batch_size", 256),
                                   plain.get("limit_per_class"))
    report["model"] = f"{predictor.model.name}@sha256:{predictor.model.checkpoint_hash[:16]}"
    line = json.dumps({k: v for k, v in report.items() if k != "confusion"})
    print(line, flush=True)
    if plain.get("output_json"):
        storage.write_bytes(plain["output_json"], json.dumps(report, indent=2).encode())
    return report


@hydra.main(config_path="configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
