"""The quickstart through the real console entry point: fit, then test, in subprocesses."""

import json

import pytest
import torch
import yaml

from .conftest import TASKS, run_cli, scalars, tiny_quickstart


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart")
    config = tiny_quickstart(tmp)
    fit = run_cli("fit", "-c", str(config), cwd=tmp)
    test = run_cli("test", "-c", str(config), "--ckpt_path", "last", cwd=tmp)
    validate = run_cli("validate", "-c", str(config), "--ckpt_path", "last", cwd=tmp)
    assert "val/loss" in validate.stdout and "val/code/ppl" in validate.stdout
    return tmp, fit, test


def test_fit_writes_a_checkpoint_with_only_trainable_weights(quickstart_run):
    tmp, _, _ = quickstart_run
    checkpoint = torch.load(tmp / "checkpoints" / "last.ckpt", weights_only=False)
    keys = set(checkpoint["state_dict"])
    assert keys and all(".hycam." in k for k in keys)
    assert checkpoint["global_step"] == 12
    assert "MultiTaskDataModule" in checkpoint  # the sampler position travels with the checkpoint
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    adapter = tmp / "runs" / "tiny" / "version_0" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()


def test_tensorboard_has_the_training_scalars(quickstart_run):
    tmp, _, _ = quickstart_run
    values = scalars(tmp / "runs" / "tiny" / "version_0")
    for tag in ("train/loss", "train/balance_loss", "train/lr", "val/loss", "val/ppl"):
        assert tag in values, f"{tag} missing from {sorted(values)}"
    for task in TASKS:
        assert f"val/{task}/loss" in values and f"val/{task}/ppl" in values
    assert [step for step, _ in values["val/loss"]] == [5, 11]  # after steps 6 and 12 (0-based global steps)
    lrs = [v for _, v in values["train/lr"]]
    assert max(lrs) <= 3e-3 + 1e-9 and lrs[-1] < max(lrs)  # warmup then cosine decay
    first, last = values["train/loss"][0][1], values["train/loss"][-1][1]
    assert last < first  # it learns something in 12 steps
    hparams = yaml.safe_load((tmp / "runs" / "tiny" / "version_0" / "hparams.yaml").read_text())
    assert hparams["method"]["class_path"].endswith("HyCAMMethod")
    assert hparams["method"]["init_args"]["num_experts"] == 4


def test_test_reports_per_task_metrics(quickstart_run):
    tmp, _, test = quickstart_run
    run_dir = tmp / "runs" / "tiny" / "version_1"
    results = json.loads((run_dir / "results.json").read_text())
    for task in (*TASKS, "macro"):
        for metric in ("loss", "ppl", "sacrebleu", "rouge1", "rouge2", "rougeL", "exact_match", "task_score"):
            assert metric in results[task], f"{task}/{metric}"
    assert "Per-task test results" in test.stdout and "| **macro** |" in (run_dir / "results.md").read_text()
    values = scalars(run_dir)
    assert "test/loss" in values and all(f"test/{task}/ppl" in values for task in TASKS)
