"""Training job: ``emotion train experiment=fer_mobilenet data.root=PATH [overrides]``.

Ray Train (DDP) over Ray Data shards; checkpoints under ``<output>/ray/<run_name>``
(``storage_path`` may be ``s3://...``); the best checkpoint on the validation split is
exported to ``<output>/best.ckpt`` for ``emotion tag model.checkpoint=...`` and serving.
Prints the per-epoch curve and one JSON summary line.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from emotion import storage
from emotion.preflight import check_train_settings
from emotion.settings import parse_train_settings
from jobs.user_errors import USER_ERRORS, exit_on_user_error

if TYPE_CHECKING:
    from emotion.pipelines.training import TrainSummary

log = logging.getLogger("emotion.train")


def run(cfg: DictConfig) -> TrainSummary:
    """Run the job from a composed config (tests call this directly)."""
    settings = parse_train_settings(OmegaConf.to_container(cfg, resolve=True))  # once, before Ray starts
    check_train_settings(settings)  # the output folder
    # Ray Train, torchvision and the model families take seconds to import: a config
    # mistake is reported before that.
    from emotion.pipelines.training import run_training

    summary = run_training(settings)
    print(summary.render(), flush=True)
    print(json.dumps(json.loads(summary.to_json())), flush=True)
    return summary


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(log, errors=(*USER_ERRORS, storage.StorageError)):
        run(cfg)


if __name__ == "__main__":
    main()
