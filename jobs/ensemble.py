"""``emotion ensemble``: one checkpoint that averages the scores of several face models.

    emotion ensemble --out ensemble.ckpt qcs_ferplus qcs_face_v2
    emotion tag model=face_ensemble model.checkpoint=ensemble.ckpt input=... output=...

Members are checkpoints from ``emotion train``, ``s3://`` URIs or shipped weights names;
they must read the same crop and score the same labels. The written file holds their
weights (float16 unless ``--fp32``), so it loads and ships like any other checkpoint.
"""

from __future__ import annotations

import argparse
import logging

from emotion.checkpoint import load_checkpoint
from emotion.models.face.ensemble import write_ensemble_checkpoint
from jobs.user_errors import exit_on_user_error

log = logging.getLogger("emotion.ensemble")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="emotion ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="+", help="member checkpoints: paths, s3:// URIs or shipped weights names")
    parser.add_argument("--out", required=True, help="where to write the ensemble checkpoint (path or s3:// URI)")
    parser.add_argument("--fp32", action="store_true", help="store the weights as float32 (default: float16)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="emotion ensemble: %(message)s")
    with exit_on_user_error(log):
        written = write_ensemble_checkpoint(args.members, args.out, half=not args.fp32)
        ckpt = load_checkpoint(written)
    print(f"wrote {written}: face_ensemble of {len(args.members)} members over {', '.join(ckpt['labels'])}, "
          f"sha256 {ckpt['sha256']}")
    print(f"use it with: emotion tag model=face_ensemble model.checkpoint={written} ...")


if __name__ == "__main__":
    main()
