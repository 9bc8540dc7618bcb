"""Progress output: plain lines with step, loss and speed when stdout is a file or a pipe; a sensible epoch."""

from __future__ import annotations

import re
import sys

import lightning as L
import pytest

from hycam_pl.callbacks import ProgressBar, ProgressLog
from hycam_pl.methods import HyCAMMethod
from hycam_pl.training import MultiTaskLM
from tests.reliability.helpers import tiny_data
from tests.tiny import tiny_byte_llama

LINE = re.compile(
    r"^step (\d+)/6 \| loss (\d+\.\d{4}) \| \d+\.\d\d steps/s \| [\d,]+ tok/s \| \d+:\d\d elapsed \| eta \d+:\d\d$"
)


def _fit(tmp_path, callbacks, **trainer):
    L.seed_everything(0)
    model = MultiTaskLM(tiny_byte_llama(), method=HyCAMMethod(num_experts=2, rank=4), learning_rate=1e-2)
    options = dict(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    options.update(trainer)
    trainer = L.Trainer(**options)
    trainer.fit(model, datamodule=tiny_data())
    return trainer


def test_progress_lines_when_stdout_is_not_a_terminal_and_a_bar_without_a_negative_epoch(tmp_path, capsys):
    bar = ProgressBar()
    _fit(tmp_path, [ProgressLog(every_n_steps=2), bar])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == [2, 4, 6]
    losses = [float(m.group(2)) for m in matches]
    assert all(0 < loss < 10 for loss in losses) and losses[-1] < losses[0], losses
    assert bar.trainer.max_epochs == -1 and bar._get_train_description(0).strip() == "Epoch 0"


def test_progress_lines_stay_off_on_a_terminal_unless_always(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    logs = [ProgressLog(every_n_steps=2), ProgressLog(every_n_steps=3, when="always")]
    _fit(tmp_path, logs, enable_progress_bar=False)  # a bar on a "terminal" would take over stdout
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 3/6", "step 6/6"]


def test_progress_options_are_checked():
    with pytest.raises(ValueError, match="every_n_steps=0"):
        ProgressLog(every_n_steps=0)
    with pytest.raises(ValueError, match="when='sometimes'"):
        ProgressLog(when="sometimes")
