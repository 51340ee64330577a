"""Tagging job: ``emotion tag input=PATH output=PATH [overrides]`` (Hydra app)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from emotion import storage
from emotion.pipelines.tagging import tag_images
from emotion.preflight import check_tag_settings
from emotion.tagging import report
from emotion.tagging.lock import OutputLockedError
from emotion.tagging.output import OutputMismatch
from emotion.tagging.summary import TagSummary
from emotion.settings import parse_tag_settings
from jobs.user_errors import USER_ERRORS, exit_on_user_error

# A storage failure (bucket missing, no credentials), a locked output and an output of
# another model or other crop settings are the user's to fix: one line, exit 2, no traceback.
TAG_USER_ERRORS = (*USER_ERRORS, storage.StorageError, OutputLockedError, OutputMismatch)

log = logging.getLogger("emotion.tag")


def run(cfg: DictConfig) -> TagSummary:
    """Run the job from a composed config (tests call this directly)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    settings = parse_tag_settings(plain)  # once, before anything starts
    check_tag_settings(settings)  # the output and annotate folders, the checkpoint
    summary = tag_images(settings)
    # A few images are worth a line each; thousands would bury the summary.
    echo = 0 < summary.images <= settings.echo_images
    images = report.read_images(summary.files) if echo or settings.annotate else []
    if echo:
        report.print_images(images)
    print(summary.render(), flush=True)
    if settings.summary_json:
        storage.write_bytes(settings.summary_json, summary.to_json().encode())
    if settings.annotate:
        print(report.annotate(images, settings.annotate).render(), flush=True)
    return summary


@hydra.main(config_path="configs", config_name="tag", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(log, errors=TAG_USER_ERRORS):
        run(cfg)


if __name__ == "__main__":
    main()
