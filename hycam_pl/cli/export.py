"""``hycam export CKPT OUT_DIR``: write the adapter folder of a training checkpoint (hycam_pl.training.export)."""

from __future__ import annotations

import argparse
import os

from hycam_pl.cli.errors import report_user_errors
from hycam_pl.training.checkpoints import TRUST_ENV
from hycam_pl.training.export import USAGE, export


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hycam export", description=USAGE)
    parser.add_argument("checkpoint", help="a .ckpt file, or a distributed / DeepSpeed checkpoint folder")
    parser.add_argument(
        "out_dir",
        help="the adapter folder to write: new, empty, or a previous export of the same kind (only the "
        "adapter's own files are replaced; nothing else in it is touched)",
    )
    parser.add_argument(
        "--trust-checkpoint-code",
        action="store_true",
        help=f"read a DeepSpeed folder holding objects beyond the allow-list with DeepSpeed's full unpickling "
        f"(same as {TRUST_ENV}=1); only for folders you wrote yourself",
    )
    args = parser.parse_args(argv)
    if args.trust_checkpoint_code:
        os.environ[TRUST_ENV] = "1"
    with report_user_errors():
        target = export(args.checkpoint, args.out_dir)
        print(f"Wrote the adapter to {target}")
