"""MultiTaskDataModule end to end: batches, report, generation sample, predict file, CLI config, resume."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from hycam_pl.data import IGNORE_INDEX, DataError, MultiTaskDataModule, TaskConfig
from tests.data.helpers import AUTO_COT, SYNTHETIC, requires_auto_cot


def synthetic_tasks(num_examples: int = 60) -> list[TaskConfig]:
    return [
        TaskConfig(name=kind, source="synthetic", path=kind, num_examples=num_examples) for kind in SYNTHETIC
    ]


def make_datamodule(tmp_path, **kwargs) -> MultiTaskDataModule:
    arguments = {"tasks": synthetic_tasks(), "batch_size": 4, "cache_dir": str(tmp_path / "cache")}
    arguments.update(kwargs)
    datamodule = MultiTaskDataModule(**arguments)
    datamodule.setup("fit")
    return datamodule


def test_end_to_end_with_the_four_synthetic_tasks(tmp_path):
    datamodule = make_datamodule(tmp_path, generation_samples_per_task=3, eval_batch_size=8)
    assert datamodule.task_names == list(SYNTHETIC)
    assert len(datamodule.tokenizer) == 384
    assert set(datamodule.scorers) == set(SYNTHETIC)
    assert datamodule.scorers["arithmetic"]("The answer is 7.", "3 + 4 = 7. The answer is 7.") == 1.0

    report = datamodule.report
    for kind in SYNTHETIC:
        task = report[kind]
        assert (task.records, task.skipped, task.truncated, task.dropped) == (60, 0, 0, 0)
        assert [task.splits[s].examples for s in ("train", "validation", "test")] == [42, 12, 6]
    assert "arithmetic" in str(report) and report.as_dict()["qa"]["train_examples"] == 42
    assert datamodule.sampling_probabilities == pytest.approx(dict.fromkeys(SYNTHETIC, 0.25))

    train = datamodule.train_dataloader()
    assert len(train) == 4 * 42 // 4
    batch = next(iter(train))
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        "task_ids",
        "example_ids",
        "loss_tokens",
        "loss_examples",
    }
    assert all(
        i.startswith(SYNTHETIC[t] + ":") for i, t in zip(batch["example_ids"], batch["task_ids"].tolist())
    )
    # Without accumulation or other ranks, the optimizer step's loss normaliser is this batch's own count.
    assert (
        batch["loss_tokens"] == (batch["labels"][:, 1:] != IGNORE_INDEX).sum() and batch["loss_examples"] == 4
    )
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].shape[1] == batch["attention_mask"].sum(1).max().item() <= 256
    assert batch["task_ids"].shape == (4,) and set(batch["task_ids"].tolist()) <= {0, 1, 2, 3}
    assert ((batch["labels"] == IGNORE_INDEX) | (batch["attention_mask"] == 1)).all()

    val_task_ids = torch.cat([b["task_ids"] for b in datamodule.val_dataloader()])
    assert val_task_ids.tolist() == [0, 1, 2, 3] * 12  # the tasks in turn (hycam_pl.data.eval_order)
    assert sum(len(b["task_ids"]) for b in datamodule.test_dataloader()) == 24

    generation = list(datamodule.generation_dataloader("validate"))
    tasks = [task for b in generation for task in b["tasks"]]
    assert tasks == [kind for kind in SYNTHETIC for _ in range(3)]
    first = generation[0]
    assert set(first) == {
        "input_ids",
        "attention_mask",
        "task_ids",
        "prompts",
        "references",
        "tasks",
        "example_ids",
    }
    assert (first["attention_mask"][:, -1] == 1).all()  # left padded: every prompt ends at the last position
    assert first["prompts"][0].endswith("### Response:\n")
    again = [
        p
        for b in make_datamodule(tmp_path, generation_samples_per_task=3).generation_dataloader("val")
        for p in b["prompts"]
    ]
    assert again == [p for b in generation for p in b["prompts"]]  # a fixed sample


def test_state_dict_round_trips_and_resumes_the_training_order(tmp_path):
    datamodule = make_datamodule(tmp_path)
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    seen = [next(iterator)["input_ids"] for _ in range(5)]
    state = datamodule.state_dict()
    assert state["epoch"] == 0 and state["batch"] == 5 and state["train_sizes"] == [42] * 4
    json.dumps(state)  # plain types only: safe for weights_only checkpoint loading

    expected = [b["input_ids"] for b in make_datamodule(tmp_path).train_dataloader()]
    resumed = make_datamodule(tmp_path)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    rest = [b["input_ids"] for b in resumed.train_dataloader()]
    assert len(seen) + len(rest) == len(expected)
    for got, want in zip(seen + rest, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("saved", "now", "expected"),
    [
        ({"sampling": "uniform"}, {"sampling": "temperature"}, "sampling 'uniform' -> 'temperature'"),
        (
            {"sampling": "temperature", "temperature": 2.0},
            {"sampling": "temperature", "temperature": 5.0},
            "temperature 2.0 -> 5.0",
        ),
        ({}, {"samples_per_epoch": 64}, "samples_per_epoch None -> 64, batches_per_epoch 42 -> 16"),
        (
            {"sampling": "proportional", "temperature": 2.0},
            {"temperature": 5.0},
            None,
        ),  # not read: no warning
        ({"sampling": "uniform"}, {"sampling": "uniform"}, None),
    ],
)
def test_resuming_with_another_task_mixture_or_epoch_size_warns(tmp_path, caplog, saved, now, expected):
    state = make_datamodule(tmp_path, **saved).state_dict()
    resumed = make_datamodule(tmp_path, **now)
    with caplog.at_level("WARNING", logger="hycam_pl.data.datamodule"):
        resumed.load_state_dict(state)
    warned = [r.getMessage() for r in caplog.records if "resuming with a different" in r.getMessage()]
    if expected is None:
        assert not warned
    else:
        assert len(warned) == 1 and expected in warned[0], warned
        assert "differ from those of the interrupted run" in warned[0]


def test_second_setup_uses_the_tokenisation_cache(tmp_path, monkeypatch):
    import hycam_pl.data.tokenize as tokenize_module

    make_datamodule(tmp_path)
    monkeypatch.setattr(
        tokenize_module, "_tokenize_batch", lambda *a, **k: (_ for _ in ()).throw(AssertionError)
    )
    assert make_datamodule(tmp_path).report["qa"].splits["train"].examples == 42


def test_predict_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"instruction": "Reverse the list: [1, 2]", "task": "list_ops"},
        {"instruction": "Hi", "input": "there", "output": "yo"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    datamodule = make_datamodule(tmp_path, predict_file=str(path))
    batch = next(iter(datamodule.predict_dataloader()))
    assert batch["tasks"] == ["list_ops", None] and batch["task_ids"].tolist() == [3, -1]
    assert batch["references"] == [None, "yo"] and "### Input:\nthere" in batch["prompts"][1]
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert batch["input_ids"].shape[1] == max(len(p.encode()) for p in batch["prompts"])

    path.write_text(json.dumps({"instruction": "x", "task": "poetry"}) + "\n")
    with pytest.raises(DataError) as error:
        make_datamodule(tmp_path, predict_file=str(path)).predict_dataloader()
    assert str(error.value) == (
        f"predict_file: {path}: record 0 (line 1): field 'task': unknown task 'poetry'; "
        "known tasks: arithmetic, code, qa, list_ops"
    )


def test_constructor_validation():
    with pytest.raises(ValueError, match="task names must be unique; repeated: qa"):
        MultiTaskDataModule([TaskConfig(name="qa", source="synthetic", path="qa")] * 2)
    with pytest.raises(ValueError, match="sampling must be one of proportional, uniform, temperature"):
        MultiTaskDataModule(synthetic_tasks(), sampling="greedy")
    datamodule = MultiTaskDataModule([{"name": "qa", "source": "synthetic", "path": "qa"}])
    assert isinstance(datamodule.tasks[0], TaskConfig)


def test_all_too_long_task_fails_setup_naming_the_task(tmp_path):
    with pytest.raises(DataError, match=r"task 'arithmetic': all 60 examples are longer than max_length=100"):
        make_datamodule(tmp_path, max_length=100)


def test_lightning_cli_style_config_builds_the_datamodule(tmp_path):
    from jsonargparse import ArgumentError, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiTaskDataModule, "data")
    config = parser.parse_object(
        {
            "data": {
                "tasks": [
                    {"name": "qa", "source": "synthetic", "path": "qa", "num_examples": 20},
                    {
                        "class_path": "hycam_pl.data.TaskConfig",
                        "init_args": {
                            "name": "csv",
                            "source": "csv",
                            "path": "x.csv",
                            "fields": {"output": "answer"},
                            "split_ratios": [0.7, 0.2, 0.0],
                        },
                    },
                ],
                "sampling": "temperature",
                "cache_dir": str(tmp_path),
            }
        }
    )
    datamodule = parser.instantiate(config).data
    assert isinstance(datamodule, MultiTaskDataModule) and datamodule.sampling == "temperature"
    assert datamodule.tasks[0].scorer == "normalized_exact_match"
    assert datamodule.tasks[1] == TaskConfig(
        name="csv", source="csv", path="x.csv", fields={"output": "answer"}, split_ratios=(0.7, 0.2, 0.0)
    )
    with pytest.raises(ArgumentError, match="Got value: xml"):
        parser.parse_object({"data": {"tasks": [{"name": "x", "source": "xml", "path": "p"}]}})


@requires_auto_cot
def test_auto_cot_as_a_task_in_the_datamodule(tmp_path):
    task = TaskConfig(
        name="auto-cot", source="json", path=str(AUTO_COT), max_examples=300, scorer="final_answer"
    )
    datamodule = MultiTaskDataModule(
        [task, *synthetic_tasks(20)], max_length=512, batch_size=2, cache_dir=str(tmp_path)
    )
    datamodule.setup()
    report = datamodule.report["auto-cot"]
    assert report.records == 5816 and sum(s.total for s in report.splits.values()) == 300
    assert report.splits["train"].examples + report.splits["train"].dropped == 210
    references = [
        r
        for b in datamodule.generation_dataloader("test")
        for r, t in zip(b["references"], b["tasks"])
        if t == "auto-cot"
    ]
    assert len(references) == 27  # fewer test examples than generation_samples_per_task: all of them
    assert all(datamodule.scorers["auto-cot"](r, r) == 1.0 for r in references)


# ----------------------------------------------------------------------------- resume inside Lightning
class _Recorder(__import__("lightning").pytorch.LightningModule):
    """A tiny model that records a fingerprint of every training batch it trains on."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(384, 4)
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(tuple(batch["input_ids"].sum(1).tolist()) + tuple(batch["task_ids"].tolist()))
        return self.embedding(batch["input_ids"]).mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, ckpt_path=None, callbacks=(), num_workers=0, **trainer_kwargs) -> list[tuple]:
    import lightning.pytorch as pl

    datamodule = MultiTaskDataModule(
        synthetic_tasks(20),
        batch_size=2,
        samples_per_epoch=14,
        cache_dir=str(tmp_path / "cache"),
        num_workers=num_workers,
    )
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        val_check_interval=4,
        callbacks=list(callbacks),
        default_root_dir=str(tmp_path),
        **trainer_kwargs,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    return model.seen


class _SaveAt(__import__("lightning").pytorch.Callback):
    """Saves a checkpoint from the hooks where checkpoints are saved in practice, noting batches trained."""

    def __init__(self, directory) -> None:
        self.directory, self.saved = directory, {}

    def _save(self, trainer, pl_module, name) -> None:
        path = self.directory / f"{name}.ckpt"
        trainer.save_checkpoint(path)
        self.saved[name] = (path, len(pl_module.seen))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in (3, 7, 10):  # mid-epoch, last batch of epoch 0, mid-epoch 1
            self._save(trainer, pl_module, f"batch_end_step{trainer.global_step}")

    def on_validation_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, f"validation_end_step{trainer.global_step}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self._save(trainer, pl_module, "train_epoch_end0")


def test_resume_from_mid_epoch_checkpoints_sees_exactly_the_remaining_batches(tmp_path):
    saver = _SaveAt(tmp_path)
    full = _fit(tmp_path, callbacks=[saver])
    assert len(full) == 14  # 2 epochs × 7 batches
    assert {"batch_end_step3", "batch_end_step7", "validation_end_step4", "train_epoch_end0"} <= set(
        saver.saved
    )
    for name, (path, trained) in saver.saved.items():
        state = torch.load(path, weights_only=True)["MultiTaskDataModule"]
        assert state["epoch"] * 7 + state["batch"] == trained, name
        assert _fit(tmp_path, ckpt_path=str(path)) == full[trained:], name


def test_resume_with_workers_and_reloaded_dataloaders(tmp_path):
    """Workers pre-fetch from the sampler when Lightning builds (and, on reload, rebuilds) the iterator."""
    saver = _SaveAt(tmp_path)
    options = {"num_workers": 1, "reload_dataloaders_every_n_epochs": 1}
    full = _fit(tmp_path, callbacks=[saver], **options)
    assert len(full) == 14
    path, trained = saver.saved["batch_end_step10"]
    assert _fit(tmp_path, ckpt_path=str(path), **options) == full[trained:]


def test_importing_the_data_package_does_not_import_lightning():
    import subprocess
    import sys

    code = (
        "import sys, hycam_pl; before = set(sys.modules); import hycam_pl.data; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "assert not new & {'lightning', 'pytorch_lightning'}, new; "
        "assert 'hycam_pl.data.datamodule' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
