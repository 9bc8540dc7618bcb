"""``hycam fit|validate|test|predict -c config.yaml``: LightningCLI over MultiTaskLM and MultiTaskDataModule.
``hycam sweep``, ``hycam export`` and ``hycam compare`` are plain commands of their own modules.

Configs mirror constructor arguments (``class_path``/``init_args``) and may use OmegaConf interpolation, e.g. one
``max_length`` referenced by data and model: ``${data.max_length}``.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.training import MultiTaskLM
from hycam_pl.training.checkpoints import install_safe_checkpoint_loading
from hycam_pl.training.faults import install_atomic_checkpoint_io, install_final_last_checkpoint
from hycam_pl.training.resume import check_output_directories, prepare_checkpoint
from hycam_pl.training.sharding import deferred_build, quiet_deepspeed_detection, shards_weights
from hycam_pl.training.signals import exit_codes_for_signals
from hycam_pl.training.validation import preflight, report_user_errors, validate_cli_config


class HyCAMCLI(LightningCLI):
    def _parse_ckpt_path(self) -> None:
        """Lightning's version re-parses the checkpoint's saved hyper-parameters over the user's ``model.*``
        options, silently. Here the user's options stay; :func:`prepare_checkpoint` checks them against the
        checkpoint instead (weight-defining options must match, the others take effect)."""

    def before_instantiate_classes(self) -> None:
        validate_cli_config(self.config, self.subcommand)  # model options, before any weights are loaded
        if self.subcommand is None:
            return
        section = self.config[self.subcommand]
        # Before the data or any weights are loaded: output directories, then `--ckpt_path` (resolve `last`,
        # refuse a missing/truncated checkpoint or one whose weight-defining options differ from the config).
        check_output_directories(section, self.subcommand)
        prepare_checkpoint(section, self.subcommand)

    def instantiate_classes(self) -> None:
        """Under a sharding strategy the model is built per rank in ``configure_model``, not here."""
        section = self.config[self.subcommand] if self.subcommand else self.config
        trainer = section.get("trainer") if hasattr(section, "get") else None
        strategy = trainer.get("strategy") if hasattr(trainer, "get") else None
        strategy = strategy.as_dict() if hasattr(strategy, "as_dict") else strategy
        with deferred_build() if shards_weights(strategy) else nullcontext():
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_checkpoint_io(trainer)
        install_final_last_checkpoint(trainer)  # last.ckpt is the final step, whatever the interval
        install_safe_checkpoint_loading(trainer)  # Lightning's own --ckpt_path load cannot run code either
        return trainer

    def before_fit(self) -> None:
        preflight(self.model, self.datamodule, "fit")  # bad data fails before a run directory exists

    def before_validate(self) -> None:
        preflight(self.model, self.datamodule, "validate")

    def before_test(self) -> None:
        preflight(self.model, self.datamodule, "test")


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["sweep"]:  # not a LightningCLI subcommand: runs many of them (hycam_pl.sweeps)
        from hycam_pl.sweeps.cli import main as sweep

        return sweep(argv[1:])
    if argv[:1] == ["compare"]:  # paired statistics of test runs (hycam_pl.metrics.compare)
        from hycam_pl.metrics.compare import main as compare

        raise SystemExit(compare(argv[1:]))
    if argv[:1] == ["export"]:  # a checkpoint's adapter folder (hycam_pl.training.export)
        from hycam_pl.training.export import main as export

        return export(argv[1:])
    quiet_deepspeed_detection()
    with exit_codes_for_signals(), report_user_errors():  # SIGTERM: exit 143, SIGINT: 130 (never 0)
        _main(args)


def _main(args: list[str] | None) -> None:
    # "omegaconf+" resolves interpolation after every config file and command-line override is merged, so
    # ``--data.max_length 128`` also reaches ``${data.max_length}``; absolute paths stay as users write them.
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    HyCAMCLI(
        MultiTaskLM,
        MultiTaskDataModule,
        seed_everything_default=2333,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
