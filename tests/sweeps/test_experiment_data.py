"""The experiments' shared data overlay (experiments/tasks.yaml) and base-model config parse over the SmolLM2
base config, and their data sets up as the experiment READMEs describe: the four synthetic tasks plus a fixed
500-record Auto-CoT subset read from $HYCAM_AUTO_COT (default ../shared/data/auto-cot.json), few Auto-CoT answers
truncated, every reference has a final answer (a number, Yes/No or a choice). Skipped where that file is absent."""

from __future__ import annotations

import pytest

from hycam_pl.data import get_scorer
from hycam_pl.data.scorers import final_answer
from tests.data.helpers import AUTO_COT, requires_auto_cot
from tests.training.conftest import REPO
from tests.training.test_configs import print_config

EXPERIMENTS = REPO / "experiments"


@requires_auto_cot
def test_experiment_data_overlay_and_base_model_config_set_up_the_five_tasks(monkeypatch: pytest.MonkeyPatch):
    from hycam_pl.data import MultiTaskDataModule

    monkeypatch.chdir(REPO)  # the Auto-CoT path is relative to the repository root, where sweeps run
    config = print_config(
        REPO / "configs" / "smollm2" / "hycam.yaml",
        EXPERIMENTS / "tasks.yaml",
        EXPERIMENTS / "base_model.yaml",
    )
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "experiments/base_model"
    assert config["model"]["generation"]["max_new_tokens"] == 160
    data = config["data"]
    # the path comes from the config's one override ($HYCAM_AUTO_COT or its default), resolved by the CLI
    assert (REPO / data["tasks"][-1]["path"]).resolve() == AUTO_COT
    datamodule = MultiTaskDataModule(**{**data, "cache_dir": None})
    datamodule.setup("fit")
    rows = {row[0]: row[1:] for row in (line.split() for line in str(datamodule._report).splitlines()[1:])}
    assert list(rows) == ["arithmetic", "code", "qa", "list_ops", "auto_cot"]
    records, skipped, train, validation, test, truncated, dropped = map(int, rows["auto_cot"])
    # All 5,816 records read; the seeded 500-record subset split 350 / 100 / 50.
    assert (records, skipped, dropped) == (5816, 0, 0) and (train, validation, test) == (350, 100, 50)
    assert truncated <= 0.15 * 500, rows["auto_cot"]  # measured: 46 (9%)
    assert all(row[-2:] == ["0", "0"] for name, row in rows.items() if name != "auto_cot")
    auto_cot = next(t for t in datamodule.tasks if t.name == "auto_cot")
    assert auto_cot.scorer == "final_answer" and get_scorer("final_answer") is not None
    references = [
        item["reference"] for item in datamodule._generation_items["test"] if item["task"] == "auto_cot"
    ]
    assert len(references) == 16 and all(final_answer(text) for text in references)


def test_the_auto_cot_path_is_one_environment_override(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Runs anywhere (nothing is read): the experiments' config resolves HYCAM_AUTO_COT, else its default."""
    files = (REPO / "configs" / "smollm2" / "hycam.yaml", EXPERIMENTS / "tasks.yaml")
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("HYCAM_AUTO_COT", raising=False)
    assert print_config(*files)["data"]["tasks"][-1]["path"] == "../shared/data/auto-cot.json"
    elsewhere = str(tmp_path / "auto-cot.json")
    monkeypatch.setenv("HYCAM_AUTO_COT", elsewhere)
    assert print_config(*files)["data"]["tasks"][-1]["path"] == elsewhere
