"""A trained face checkpoint as it would ship: float16, mirror-averaged (``test_flip``), with
the face_v2 mixture's class prior stored for users who turn the prior correction on (off:
``prior_correction`` 0).

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
    args = parser.parse_args()
    prior = json.loads(PRIOR.read_text())
    print(export_weights(args.source, args.target, half=True,
                         model_cfg_updates={"test_flip": True, "class_prior": prior, "prior_correction": 0.0}))


if __name__ == "__main__":
    main()
