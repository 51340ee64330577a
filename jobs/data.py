"""Dataset commands: ``emotion data prepare ...`` and ``emotion data synth ...``."""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from emotion.data.prepare import build_prepare
from emotion.data.stats import format_stats
from emotion.data.synthetic import build_synthetic


def run_prepare(cfg: DictConfig) -> dict:
    result = build_prepare(OmegaConf.to_container(cfg, resolve=True))
    print(format_stats(result["stats"]))
    print(f"wrote {len(result['shards'])} shards and stats.txt/stats.json/stats.png to {result['output_uri']}")
    return result


def run_synth(cfg: DictConfig) -> dict:
    summary = build_synthetic(OmegaConf.to_container(cfg, resolve=True))
    print(json.dumps(summary, default=str))
    return summary


@hydra.main(config_path="configs", config_name="data_prepare", version_base="1.3")
def prepare_main(cfg: DictConfig) -> None:
    run_prepare(cfg)


@hydra.main(config_path="configs", config_name="data_synth", version_base="1.3")
def synth_main(cfg: DictConfig) -> None:
    run_synth(cfg)


SUBCOMMANDS = {"prepare": prepare_main, "synth": synth_main}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in SUBCOMMANDS:
        print("usage: emotion data {prepare|synth} [key=value ...]\n"
              "  prepare  convert a dataset (emotic, emotic_csv, caer, rafdb, image_folder, fer, synthetic)\n"
              "           into sharded Parquet with a statistics report\n"
              "  synth    generate synthetic scenes in EMOTIC format", file=sys.stderr)
        sys.exit(2)
    sub = args[0]
    sys.argv = [f"{sys.argv[0]} {sub}", *args[1:]]
    SUBCOMMANDS[sub]()


if __name__ == "__main__":
    main()
