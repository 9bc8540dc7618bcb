"""Checkpoints through the real CLI: what a user changes on resume takes effect or is refused with one line,
bad checkpoints and unwritable outputs get one ``error:`` line, every run keeps its own checkpoints, and
checkpoint/adapter files are readable by other users (umask permissions, not mkstemp's 0600).

One module fixture trains two runs of the same config and resumes the second with a lower learning rate;
the error cases run in-process (they stop before any model is built).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.reliability.helpers import CliResult, error_lines, run_hycam, run_hycam_in_process
from tests.training.conftest import scalars, tiny_quickstart

OLD_LR, NEW_LR = 3.0e-3, 1.0e-3
FIRST_STEPS, RESUMED_STEPS = 4, 8


@dataclass
class Runs:
    root: Path
    config: Path
    first: CliResult
    second: CliResult
    resumed: CliResult
    tested: CliResult
    first_digests_before: dict[str, str]

    def run_dir(self, version: int) -> Path:
        return self.root / "runs" / "tiny" / f"version_{version}"

    def checkpoints(self, version: int) -> Path:
        return self.run_dir(version) / "checkpoints"


def per_run_config(root: Path) -> Path:
    """The tiny config as shipped: ``ModelCheckpoint`` without ``dirpath`` (checkpoints in each run directory);
    every checkpoint kept, no validation (not what is tested here)."""
    path = tiny_quickstart(root, max_steps=FIRST_STEPS, val_every=2, num_examples=16, learning_rate=OLD_LR)
    config = yaml.safe_load(path.read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].pop("dirpath")
            callback["init_args"]["save_top_k"] = -1
    config["trainer"].update(limit_val_batches=0, enable_progress_bar=False)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.ckpt"))}


def ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("resume")
    config = per_run_config(root)
    previous_umask = os.umask(0o022)  # the subprocesses inherit it
    try:
        fit = ["fit", "-c", str(config)]
        first = ok(run_hycam(fit, cwd=root))
        before = digests(root / "runs" / "tiny" / "version_0" / "checkpoints")
        second = ok(run_hycam(fit, cwd=root))
        resume = ["--ckpt_path", "last", "--trainer.max_steps", str(RESUMED_STEPS)]
        resumed = ok(run_hycam([*fit, *resume, "--model.learning_rate", str(NEW_LR)], cwd=root))
        tested = ok(run_hycam(["test", "-c", str(config), "--ckpt_path", "last"], cwd=root))
    finally:
        os.umask(previous_umask)
    return Runs(root, config, first, second, resumed, tested, before)


# ------------------------------------------------------------------------------- per-run checkpoint folders
def test_each_run_keeps_its_own_checkpoints(runs: Runs):
    for version in (0, 1):
        names = {p.name for p in runs.checkpoints(version).glob("*.ckpt")}
        assert "last.ckpt" in names and f"epoch=0-step={FIRST_STEPS}.ckpt" in names, (version, names)
    assert digests(runs.checkpoints(0)) == runs.first_digests_before, "a later run overwrote run 0's files"
    assert not (runs.root / "runs" / "tiny" / "checkpoints").exists()


def test_shipped_configs_keep_checkpoints_per_run():
    """A ``dirpath`` would make every run of a config share (and overwrite) one checkpoint folder."""
    from tests.training.conftest import REPO

    checked = 0
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        for callback in (yaml.safe_load(path.read_text()).get("trainer") or {}).get("callbacks") or []:
            if callback["class_path"].endswith("ModelCheckpoint"):
                checked += 1
                assert "dirpath" not in (callback.get("init_args") or {}), path
    assert checked >= 2


def test_fit_resume_last_continues_the_latest_run_in_its_directory(runs: Runs):
    output = runs.resumed.stdout + runs.resumed.stderr
    assert f"checkpoint path at {runs.checkpoints(1) / 'last.ckpt'}" in output, output[-3000:]
    saved = torch.load(runs.checkpoints(1) / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == RESUMED_STEPS
    assert (runs.checkpoints(1) / f"epoch=0-step={RESUMED_STEPS}.ckpt").is_file()
    steps = [step for step, _ in scalars(runs.run_dir(1))["train/loss"]]
    assert max(steps) >= RESUMED_STEPS - 1 and steps == sorted(set(steps)), steps  # one curve, no repeats
    run_0 = torch.load(runs.checkpoints(0) / "last.ckpt", map_location="cpu", weights_only=False)
    assert run_0["global_step"] == FIRST_STEPS


def test_lower_learning_rate_on_resume_takes_effect_and_is_logged(runs: Runs):
    from transformers import get_cosine_schedule_with_warmup

    warmup = -(-int(0.05 * 100 * RESUMED_STEPS) // 100)  # ceil(warmup_ratio * total), as configured
    schedule = get_cosine_schedule_with_warmup(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), warmup, RESUMED_STEPS
    ).lr_lambdas[0]
    logged = [(s, v) for s, v in scalars(runs.run_dir(1))["train/lr"] if s > FIRST_STEPS]
    assert logged, "the resumed run logged no learning rate"
    for step, value in logged:
        assert value == pytest.approx(NEW_LR * schedule(step), rel=1e-4), (step, value, logged)
    assert "model.learning_rate: 0.003 -> 0.001" in runs.resumed.stderr
    assert "base learning rate 0.003 -> 0.001" in runs.resumed.stderr, runs.resumed.stderr[-3000:]


def test_test_with_last_finds_the_latest_runs_checkpoint(runs: Runs):
    output = runs.tested.stdout + runs.tested.stderr
    assert f"checkpoint path at {runs.checkpoints(1) / 'last.ckpt'}" in output, output[-3000:]
    results = sorted((runs.root / "runs" / "tiny").glob("version_*/results.json"))
    assert len(results) == 1 and results[0].parent.name == "version_2"


def test_predict_writes_to_the_predict_output_given_with_a_checkpoint_file(runs: Runs, tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"instruction": "What is 2 + 2?", "task": "arithmetic"}) + "\n")
    output = tmp_path / "mine" / "predictions.jsonl"
    result = run_hycam_in_process(
        [
            "predict",
            "-c",
            str(runs.config),
            "--ckpt_path",
            str(runs.checkpoints(0) / "last.ckpt"),
            "--data.predict_file",
            str(prompts),
            "--model.predict_output",
            str(output),
        ],
        cwd=runs.root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.is_file() and len(output.read_text().splitlines()) == 1
    assert not list((runs.root / "runs").rglob("predictions.jsonl"))


def test_checkpoints_and_adapters_have_umask_permissions(runs: Runs):
    files = [*runs.checkpoints(0).glob("*.ckpt"), *(runs.run_dir(0) / "adapter").iterdir()]
    assert len(files) >= 4
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o644)}, modes


# ------------------------------------------------------------------------------- refused, with one line
def one_error(result: CliResult) -> str:
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("which", ["last", "file"])
def test_a_structure_change_on_resume_names_the_option_and_both_values(runs: Runs, which: str):
    ckpt = "last" if which == "last" else str(runs.checkpoints(0) / "epoch=0-step=2.ckpt")
    result = run_hycam_in_process(
        ["fit", "-c", str(runs.config), "--ckpt_path", ckpt, "--model.method.num_experts", "2"], cwd=runs.root
    )
    line = one_error(result)
    assert "model.method.num_experts: checkpoint 4 vs this run 2" in line, line


def test_a_missing_checkpoint_file_is_one_line(runs: Runs):
    missing = runs.root / "nope" / "last.ckpt"
    line = one_error(
        run_hycam_in_process(["test", "-c", str(runs.config), "--ckpt_path", str(missing)], runs.root)
    )
    assert str(missing) in line and "not found" in line


def test_a_truncated_last_checkpoint_is_named_and_the_others_listed(runs: Runs, tmp_path: Path):
    copy = tmp_path / "runs"
    shutil.copytree(runs.root / "runs", copy)
    last = copy / "tiny" / "version_1" / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # now the newest last.ckpt of this config's runs
    args = ["test", "-c", str(runs.config), "--trainer.logger.init_args.save_dir", str(copy)]
    line = one_error(run_hycam_in_process([*args, "--ckpt_path", "last"], cwd=tmp_path))
    assert str(last) in line and "truncated or not a checkpoint" in line, line
    assert str(last.parent / f"epoch=0-step={RESUMED_STEPS}.ckpt") in line, line

    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    line = one_error(run_hycam_in_process([*args, "--ckpt_path", str(not_a_checkpoint)], cwd=tmp_path))
    assert str(not_a_checkpoint) in line and "truncated or not a checkpoint" in line, line


def test_evaluating_last_without_any_checkpoint_is_refused(tmp_path: Path):
    config = per_run_config(tmp_path)
    line = one_error(run_hycam_in_process(["test", "-c", str(config), "--ckpt_path", "last"], cwd=tmp_path))
    assert "--ckpt_path last: no last checkpoint found" in line and str(tmp_path / "runs" / "tiny") in line


@pytest.mark.parametrize(
    "option",
    [
        "trainer.default_root_dir",
        "trainer.logger.init_args.save_dir",
        "data.cache_dir",
        "ModelCheckpoint dirpath",
    ],
)
def test_an_unwritable_output_directory_is_refused_before_the_data_is_read(tmp_path: Path, option: str):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file: nobody, root included, can create a directory under it")
    target = blocker / "sub"
    config = yaml.safe_load(per_run_config(tmp_path).read_text())
    # Data that would fail to load: the directory check must come first (and before any weights).
    config["data"]["tasks"] = [{"name": "qa", "source": "jsonl", "path": str(tmp_path / "missing.jsonl")}]
    overrides = [f"--{option}", str(target)]
    if option == "ModelCheckpoint dirpath":
        config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(target)
        overrides = []
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    line = one_error(run_hycam_in_process(["fit", "-c", str(path), *overrides], cwd=tmp_path))
    assert line.startswith(f"error: {option}: cannot create {target}") and "is a file" in line, line
    assert not (tmp_path / "runs").exists()


def test_the_module_refuses_a_checkpoint_with_other_tensor_shapes():
    """The Python API (``Trainer.fit(ckpt_path=...)``): same tensor names, other shapes -> a ValueError that
    says so, not torch's size-mismatch traceback."""
    from hycam_pl.methods import HyCAMMethod
    from hycam_pl.training import MultiTaskLM
    from tests.reliability.helpers import TINY_BACKBONE

    four = MultiTaskLM(dict(TINY_BACKBONE), method=HyCAMMethod(num_experts=4, rank=4))
    two = MultiTaskLM(dict(TINY_BACKBONE), method=HyCAMMethod(num_experts=2, rank=4))
    state = {k: v for k, v in four.state_dict().items() if k in four.trainable_keys()}
    assert set(state) == two.trainable_keys()  # names alone cannot tell them apart
    with pytest.raises(
        ValueError, match=r"checkpoint does not fit this model: \d+ tensors have other shapes"
    ):
        two.on_load_checkpoint({"state_dict": state})
