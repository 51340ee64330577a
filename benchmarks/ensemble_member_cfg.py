"""An ensemble checkpoint with inference keys of every member's config changed (e.g. mirror
averaging off); the weights are the same tensors.

    .venv/bin/python benchmarks/ensemble_member_cfg.py qcs_ensemble outputs/qcs_ensemble_noflip.ckpt test_flip=false

SOURCE is an ensemble checkpoint (`emotion ensemble`) or a shipped weights name; each
KEY=VALUE is read as JSON (``false``, ``0.5``, ``[...]``).
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    from emotion.checkpoint import export_weights, load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an ensemble checkpoint or a shipped weights name")
    parser.add_argument("target", help="where to write the changed checkpoint")
    parser.add_argument("updates", nargs="+", metavar="KEY=VALUE", help="a member config key and its JSON value")
    args = parser.parse_args()
    updates = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.updates)}
    ckpt = load_checkpoint(args.source)
    if "members" not in ckpt["model_cfg"]:
        raise SystemExit(f"{args.source} is a {ckpt['model_name']} checkpoint, not an ensemble")
    members = [{**member, "config": {**member["config"], **updates}} for member in ckpt["model_cfg"]["members"]]
    # An ensemble's tensors are float16 already: ``half`` keeps them so and says so.
    print(export_weights(args.source, args.target, half=True, model_cfg_updates={"members": members}))


if __name__ == "__main__":
    main()
