"""A trained face checkpoint as it would ship: float16, mirror-averaged (``test_flip``), with
the face_v2 mixture's class prior stored for users who turn the prior correction on (off:
``prior_correction`` 0). ``--no-prior`` stores none (a model trained on FER+ alone, as
``qcs_ferplus`` ships).

    .venv/bin/python benchmarks/export_face_model.py outputs/train/RUN/best.ckpt outputs/train/RUN/export_fp16.ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PRIOR = Path(__file__).resolve().parent / "results" / "face_v2" / "class_prior.json"


def main() -> None:
    from emotion.checkpoint import export_weights

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a checkpoint from `emotion train`")
    parser.add_argument("target", help="where to write the checkpoint to ship")
    parser.add_argument("--no-prior", action="store_true", help="store no class prior (a model trained on FER+ alone)")
    args = parser.parse_args()
    updates = {"test_flip": True}
    if not args.no_prior:
        updates.update(class_prior=json.loads(PRIOR.read_text()), prior_correction=0.0)
    print(export_weights(args.source, args.target, half=True, model_cfg_updates=updates))


if __name__ == "__main__":
    main()
