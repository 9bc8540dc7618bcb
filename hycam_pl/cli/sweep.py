"""``hycam sweep -c configs/sweeps/<name>.yaml [--address ADDR] [--output DIR]``."""

from __future__ import annotations

import argparse

from hycam_pl.cli.errors import report_user_errors
from hycam_pl.sweeps.runner import plan, run_sweep
from hycam_pl.sweeps.spec import load_sweep


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hycam sweep",
        description="Run a grid of hycam trials (fit, then test --ckpt_path last) on Ray Tune and aggregate them. "
        "Rerunning the same command runs only the unfinished trials.",
    )
    p.add_argument("-c", "--config", required=True, help="the sweep file (e.g. configs/sweeps/experts.yaml)")
    p.add_argument(
        "--address", help="join this Ray cluster (e.g. ray://head:10001 or auto); default: a local Ray"
    )
    p.add_argument(
        "--output", help="the sweep directory (default: the sweep file's output, or runs/sweeps/<name>)"
    )
    p.add_argument("--retry-failed", action="store_true", help="run trials that failed earlier again")
    p.add_argument(
        "--aggregate-only", action="store_true", help="rebuild tables, plots and HParams; run nothing"
    )
    p.add_argument("--dry-run", action="store_true", help="list the trials and their state; run nothing")
    return p


def main(args: list[str] | None = None) -> None:
    options = parser().parse_args(args)
    with report_user_errors():
        spec = load_sweep(options.config, output=options.output)
        if options.dry_run:
            for item in plan(spec, spec.output.resolve(), options.retry_failed):
                print(f"{item.status:8s} {item.trial.id}")
            return
        code = run_sweep(
            spec,
            address=options.address,
            retry_failed=options.retry_failed,
            aggregate_only=options.aggregate_only,
        )
    raise SystemExit(code)
