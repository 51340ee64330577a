"""Dataset commands: ``emotion data prepare ...``, ``emotion data synth ...`` and
``emotion data scenes_v2 ...``."""

from __future__ import annotations

import json
import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from emotion.data.prepare import build_prepare
from emotion.data.stats import format_stats
from emotion.data.synthetic import build_synthetic
from emotion.data.synthetic.scenes_v2 import build_scenes_v2
from emotion.settings import ScenesV2Settings, SynthSettings, parse_settings
from jobs.user_errors import exit_on_user_error

log = logging.getLogger(__name__)


def run_prepare(cfg: DictConfig) -> dict:
    result = build_prepare(OmegaConf.to_container(cfg, resolve=True))
    print(format_stats(result["stats"]))
    print(f"wrote {len(result['shards'])} shards and stats.txt/stats.json/stats.png to {result['output_uri']}")
    return result


def given_values(cfg: DictConfig, command: str) -> dict:
    """The command's config as plain data; a key left ``???`` is an error naming it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"emotion data {command} needs {' '.join(key + '=...' for key in missing)}")
    return OmegaConf.to_container(cfg, resolve=True)


def run_synth(cfg: DictConfig) -> dict:
    settings = parse_settings(SynthSettings, given_values(cfg, "synth"))
    summary = build_synthetic(settings)
    print(json.dumps(summary, default=str))
    return summary


def run_scenes_v2(cfg: DictConfig) -> dict:
    settings = parse_settings(ScenesV2Settings, given_values(cfg, "scenes_v2"))
    summary = build_scenes_v2(settings)
    print(json.dumps(summary, default=str))
    return summary


@hydra.main(config_path="configs", config_name="data_prepare", version_base="1.3")
def prepare_main(cfg: DictConfig) -> None:
    run_prepare(cfg)


@hydra.main(config_path="configs", config_name="data_synth", version_base="1.3")
def synth_main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        run_synth(cfg)


@hydra.main(config_path="configs", config_name="data_scenes_v2", version_base="1.3")
def scenes_v2_main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        run_scenes_v2(cfg)


SUBCOMMANDS = {"prepare": prepare_main, "synth": synth_main, "scenes_v2": scenes_v2_main}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in SUBCOMMANDS:
        print("usage: emotion data {prepare|synth|scenes_v2} [key=value ...]\n"
              "  prepare  convert a dataset (emotic, emotic_csv, caer, rafdb, image_folder, fer, synthetic)\n"
              "           into sharded Parquet with a statistics report\n"
              "  synth    generate synthetic scenes in EMOTIC format\n"
              "  scenes_v2  generate scenes with real FER+ faces, ambiguous cues and crowds\n"
              "           (root=PATH faces=FER+ root)", file=sys.stderr)
        sys.exit(2)
    sub = args[0]
    sys.argv = [f"{sys.argv[0]} {sub}", *args[1:]]
    SUBCOMMANDS[sub]()


if __name__ == "__main__":
    main()
