"""``python -m vald_train WORK [--unet-steps N ...]``: train the demo model (resumable)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from vald_train.train import Recipe, run


def main(argv: list[str] | None = None) -> int:
    """Parse the recipe's overrides and run every stage."""
    parser = argparse.ArgumentParser(prog="python -m vald_train", description=__doc__)
    parser.add_argument("work", type=Path, help="work folder (data, checkpoints, loss curves, model/)")
    defaults = Recipe()
    for f in dataclasses.fields(Recipe):
        if f.name != "arch":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)))
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "work" and v is not None}
    recipe = dataclasses.replace(defaults, **overrides)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()

    args.work.mkdir(parents=True, exist_ok=True)
    log_file = args.work / "train.log"

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - started:7.0f}s] {message}"
        print(line, flush=True)
        with log_file.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    print(run(args.work, recipe, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
