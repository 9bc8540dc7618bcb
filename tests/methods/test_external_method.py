"""The README's "Add a method" example, written to a module outside hycam_pl and named by ``class_path`` only:
it trains, resumes bit-exactly, tests, exports, starts a run from its adapter, refuses a changed structural
option, and runs in a two-trial sweep, with no edit to hycam_pl."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.reliability.helpers import error_lines, run_hycam_in_process
from tests.training.conftest import REPO, run_cli, tiny_quickstart

pytestmark = pytest.mark.slow


def readme_example() -> tuple[str, dict]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Add a method") :]
    section = section[: section.index("\n## ")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    overlay = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    return code, overlay


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    """A user's directory: ``my_methods.py`` (the README's code) and a config that names its class."""
    root = tmp_path_factory.mktemp("external")
    code, overlay = readme_example()
    (root / "my_methods.py").write_text(code)
    config_path = tiny_quickstart(root, max_steps=4, val_every=2, num_examples=16)
    config = yaml.safe_load(config_path.read_text())
    config["model"]["method"] = overlay["model"]["method"]
    config["trainer"]["callbacks"] = [
        c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("RoutingTelemetry")
    ]
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["save_top_k"] = -1  # keep epoch=0-step=2.ckpt to resume from
    config["trainer"]["limit_val_batches"] = 1
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    sys.path.insert(0, str(root))
    yield root, config_path
    sys.path.remove(str(root))
    sys.modules.pop("my_methods", None)


def ok(result):
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def gains(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "gains.safetensors")


def test_external_method_through_fit_resume_test_export_and_adapter(project) -> None:
    root, config = project
    ok(run_hycam_in_process(["fit", "-c", str(config)], root))  # 4 steps, checkpoints at 2 and 4
    straight = gains(root / "runs" / "tiny" / "version_0" / "adapter")
    assert all(not torch.equal(g, torch.ones_like(g)) for g in straight.values()), "the gains trained"
    step2 = root / "checkpoints" / "epoch=0-step=2.ckpt"
    ok(run_hycam_in_process(["fit", "-c", str(config), "--ckpt_path", str(step2)], root))
    resumed = gains(root / "runs" / "tiny" / "version_1" / "adapter")
    assert resumed.keys() == straight.keys()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)

    refused = run_hycam_in_process(
        ["fit", "-c", str(config), "--ckpt_path", str(step2), "--model.method.target", "q_proj"], root
    )
    assert refused.returncode == 2 and error_lines(refused.stderr) == [
        f"error: --ckpt_path {step2} was trained with different weight-defining options: "
        "model.method.target: checkpoint 'o_proj' vs this run 'q_proj'; set them to the checkpoint's values "
        "(or start a new run without --ckpt_path)"
    ], refused.stderr[-3000:]

    tested = ok(run_hycam_in_process(["test", "-c", str(config), "--ckpt_path", "last"], root))
    assert "Per-task test results" in tested.stdout

    exported = root / "exported"
    ok(run_hycam_in_process(["export", str(root / "checkpoints" / "last.ckpt"), str(exported)], root))
    for name, tensor in gains(exported).items():
        torch.testing.assert_close(tensor, resumed[name], rtol=0, atol=0, msg=name)

    from hycam_pl.training import MultiTaskLM

    started = MultiTaskLM(**{**_hparams(root), "adapter": str(exported)})  # model.adapter: the method's load
    loaded = {n: p for n, p in started.model.named_parameters() if n.endswith(".gain")}
    assert loaded.keys() == resumed.keys() and all(p.requires_grad for p in loaded.values())
    assert all(torch.equal(loaded[n].detach(), resumed[n]) for n in loaded)


def _hparams(root: Path) -> dict:
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}


def test_external_method_in_a_two_trial_sweep(project, tmp_path: Path) -> None:
    root, config = project
    sweep = tmp_path / "gain.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "base": str(config),
                "output": str(tmp_path / "out"),
                "overrides": {
                    "trainer.max_steps": 1,
                    "trainer.val_check_interval": 1,
                    "trainer.limit_val_batches": 1,
                    "trainer.limit_test_batches": 1,
                    "data.generation_samples_per_task": 1,
                    "model.generation.max_new_tokens": 2,
                },
                "grid": {"model.method.init": [1.0, 0.5]},
                "metrics": ["macro/loss"],
            }
        )
    )
    run_cli("sweep", "-c", str(sweep), cwd=root, PYTHONPATH=f"{root}:{REPO}")
    results = sorted((tmp_path / "out" / "trials").glob("*/result.json"))
    assert [p.parent.name for p in results] == ["init=0.5-seed=0", "init=1.0-seed=0"]
