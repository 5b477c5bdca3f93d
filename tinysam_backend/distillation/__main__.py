"""`python -m tinysam_backend.distillation ARGS` (and `torchrun --nproc_per_node=N -m tinysam_backend.distillation
ARGS`): the `tinysam distill` arguments, without the rest of the CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import Settings
from .cli import add_arguments, cmd_distill


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinysam_backend.distillation")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return cmd_distill(args, Settings.from_env())


if __name__ == "__main__":
    sys.exit(main())
