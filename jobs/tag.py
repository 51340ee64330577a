"""Tagging job: ``emotion tag input=PATH output=PATH [overrides]`` (Hydra app)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from emotion.pipelines.tagging import TagSummary, run_tagging
from emotion import storage

log = logging.getLogger("emotion.tag")


def run(cfg: DictConfig) -> TagSummary:
    """Run the job from a composed config (tests call this directly)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    summary = run_tagging(plain)
    print(summary.render(), flush=True)
    if cfg.get("summary_json"):
        storage.write_bytes(cfg.summary_json, summary.to_json().encode())
    return summary


@hydra.main(config_path="configs", config_name="tag", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        log.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
