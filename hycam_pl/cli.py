"""``hycam fit|validate|test|predict -c config.yaml``: LightningCLI over MultiTaskLM and MultiTaskDataModule.

Configs mirror constructor arguments (``class_path``/``init_args``) and may use OmegaConf interpolation, e.g. one
``max_length`` referenced by data and model: ``${data.max_length}``.
"""

from __future__ import annotations

import sys

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.training import MultiTaskLM


class HyCAMCLI(LightningCLI):
    pass


def main(args: list[str] | None = None) -> None:
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
