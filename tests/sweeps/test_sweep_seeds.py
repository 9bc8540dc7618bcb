"""A trial's seed varies the training order too (``data.seed`` follows it unless the sweep file pins it), while
the task splits, so the validation and test examples and the generation sample, stay the same in every trial."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hycam_pl.data import MultiTaskDataModule
from hycam_pl.sweeps.spec import load_sweep
from tests.training.conftest import REPO


def _sweep(tmp_path: Path, **entries) -> Path:
    path = tmp_path / "seeds.yaml"
    content = {
        "base": str(REPO / "configs" / "tiny.yaml"),
        "output": str(tmp_path / "out"),
        "overrides": {f"data.tasks.{i}.num_examples": 40 for i in range(4)},
        "grid": {"model.method.rank": [4]},
        "seeds": [0, 1],
        "metrics": ["macro/loss"],
    }
    for key, value in entries.items():
        content[key] = {**content.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(content))
    return path


def _ids(loader) -> list[str]:
    return [example_id for batch in loader for example_id in batch["example_ids"]]


def test_two_seeds_train_in_different_orders_on_the_same_test_examples(tmp_path: Path):
    trials = load_sweep(_sweep(tmp_path)).trials()
    assert [(t.seed, t.config["seed_everything"], t.config["data"]["seed"]) for t in trials] == [
        (0, 0, 0),
        (1, 1, 1),
    ]
    orders, splits, tests, validations, generated = [], [], [], [], []
    for trial in trials:
        datamodule = MultiTaskDataModule(**{**trial.config["data"], "cache_dir": str(tmp_path / "cache")})
        datamodule.setup("fit")
        orders.append(_ids(datamodule.train_dataloader()))
        splits.append([i for part in datamodule._splits_of("train") for i in part["example_id"]])
        tests.append(_ids(datamodule.test_dataloader()))
        validations.append(_ids(datamodule.val_dataloader()))
        generated.append(_ids(datamodule.generation_dataloader("test")))
    assert orders[0] != orders[1]  # the training order differs ...
    assert splits[0] == splits[1] and set(orders[0]) | set(orders[1]) <= set(
        splits[0]
    )  # ... over the same split
    assert len(tests[0]) == 16 and tests[0] == tests[1]
    assert validations[0] == validations[1] and generated[0] == generated[1]


@pytest.mark.parametrize(
    "pin",
    [
        {"overrides": {"data.seed": 7}},
        {"overrides": {"data": {"seed": 7}}},
        {"variants": {"a": {"data.seed": 7}}},
        {"grid": {"data.seed": [7]}},
        {"grid": {"model.method.rank": [{"value": 4, "with": {"data.seed": 7}}]}},
    ],
    ids=["override", "nested-override", "variant", "grid", "grid-companion"],
)
def test_a_sweep_that_sets_data_seed_pins_it(tmp_path: Path, pin: dict):
    trials = load_sweep(_sweep(tmp_path, **pin)).trials()
    assert [t.config["seed_everything"] for t in trials] == [0, 1]
    assert [t.config["data"]["seed"] for t in trials] == [7, 7]
