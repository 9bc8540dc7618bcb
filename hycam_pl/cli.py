"""``hycam fit|validate|test|predict -c config.yaml``: LightningCLI over MultiTaskLM and MultiTaskDataModule.
``hycam sweep``, ``hycam export`` and ``hycam compare`` are plain commands of their own modules.

Configs mirror constructor arguments (``class_path``/``init_args``) and may use OmegaConf interpolation, e.g. one
``max_length`` referenced by data and model: ``${data.max_length}``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods.base import plain
from hycam_pl.methods.legacy import retired_options_error
from hycam_pl.training import MultiTaskLM
from hycam_pl.training.checkpoints import install_safe_checkpoint_loading
from hycam_pl.training.faults import install_atomic_checkpoint_io, install_final_last_checkpoint
from hycam_pl.training.resume import check_output_directories, prepare_checkpoint
from hycam_pl.training.sharding import (
    check_strategy,
    deferred_build,
    quiet_deepspeed_detection,
    shards_weights,
)
from hycam_pl.training.signals import exit_codes_for_signals
from hycam_pl.training.validation import preflight, report_user_errors, validate_model_options


def validate_cli_config(config: Any, subcommand: str | None) -> None:
    """Check the parsed ``hycam`` config (a jsonargparse Namespace) before LightningCLI instantiates anything."""
    section = config[subcommand] if subcommand else config
    check_strategy(plain(section.get("trainer") if hasattr(section, "get") else None))
    model = plain(section.get("model") if hasattr(section, "get") else None)
    if isinstance(model, Mapping):
        validate_model_options(model.get("init_args", model))


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
    retired = retired_options_in(argv)
    if retired:
        print(f"error: {retired}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    with exit_codes_for_signals(), report_user_errors():  # SIGTERM: exit 143, SIGINT: 130 (never 0)
        _main(args)


def retired_options_in(argv: list[str]) -> str | None:
    """The one-line error for a model option an earlier release had and this one replaced (in a ``-c`` file or
    on the command line), before jsonargparse would answer with its usage text; None when there is none."""
    files, flags = [], {}
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("-c", "--config") and not value and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif name == "--config" and value:
            files.append(value)
        elif name.startswith("--model."):
            flags[name.removeprefix("--model.").split(".")[0]] = value or (
                argv[i + 1] if i + 1 < len(argv) else ""
            )
    for file in files:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue  # jsonargparse reports an unreadable config itself
        if isinstance(loaded, dict):
            found = retired_options_error(loaded.get("model"), file)
            if found:
                return found
    return retired_options_error(flags, "command line") if flags else None


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
