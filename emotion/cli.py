"""The ``emotion`` command: one front for the Hydra apps in ``jobs/``.

    emotion tag input=PATH output=PATH [overrides]
    emotion eval model=fer data=image_folder data.root=PATH
    emotion train ... | emotion serve ... | emotion data ... | emotion client IMAGE...
    emotion ensemble --out PATH MEMBER MEMBER...

Everything after the command is passed to the app as Hydra overrides (``--cfg job``,
``--help`` and multirun work as in any Hydra app).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, function). Hydra apps take overrides; the others parse their own args.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "tag": ("jobs.tag", "main", "tag images into Parquet (Ray Data)"),
    "eval": ("jobs.eval", "main", "metrics of a model on a labelled dataset"),
    "train": ("jobs.train", "main", "train a model (Ray Train)"),
    "serve": ("jobs.serve", "main", "serve the HTTP API (Ray Serve)"),
    "data": ("jobs.data", "main", "prepare datasets: synthetic scenes, Parquet shards, statistics"),
    "ensemble": ("jobs.ensemble", "main", "one checkpoint averaging several face models"),
    "client": ("emotion.client", "main", "send images to a running server"),
}

# Hydra apps whose overrides are checked before the app runs (``jobs/overrides.py``).
CONFIG_NAMES: dict[str, str] = {"tag": "tag", "eval": "eval", "train": "train", "serve": "serve"}


def usage() -> str:
    lines = ["usage: emotion COMMAND [overrides...]", "", "commands:"]
    lines += [f"  {name:<7} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `emotion COMMAND --help` for a command's options and config groups."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"emotion: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module_name, function, _ = COMMANDS[command]
    if command in CONFIG_NAMES:
        # One line and exit 2 for an unknown key or group option, as for any bad value.
        importlib.import_module("jobs.overrides").exit_on_bad_overrides(CONFIG_NAMES[command], rest)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"emotion {command}: not available in this installation ({exc})", file=sys.stderr)
        sys.exit(2)
    # Hydra reads sys.argv; the program name shows in its help and error messages.
    sys.argv = [f"emotion {command}", *rest]
    getattr(module, function)()


if __name__ == "__main__":
    main()
