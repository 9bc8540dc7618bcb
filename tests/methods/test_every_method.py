"""One test matrix over every registered method (``hycam_pl.methods.METHODS``): registering a method puts it
here, as peft runs one custom-models test across its tuners. Each method, on a tiny model:

- ``hycam fit --model.method <name>`` (one option switches it) trains, tests, and exports after fit; the exported
  adapter and ``hycam export`` of the last checkpoint both reload through the method's ``load`` onto a fresh base
  with exactly the trained model's logits;
- resuming an interrupted run ends bit-identical to the uninterrupted one (peft's dropout RNG, Gumbel noise);
- biases and norm weights never decay, every trainable parameter is in exactly one group;
- a changed structural option is refused on resume, a changed setting is reported as taking effect.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import lightning as L
import pytest
import torch

from hycam_pl.backbone import load_backbone
from hycam_pl.cli import main
from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods import METHODS, resolve_method
from hycam_pl.methods.base import is_bias_or_norm
from hycam_pl.training import MultiTaskLM
from hycam_pl.training.export import export
from hycam_pl.training.resume import changed_options, option_conflicts
from tests.methods.helpers import build as build_method
from tests.tiny import tiny_byte_llama
from tests.training.conftest import tiny_quickstart
from tests.training.test_resume import Interrupt, InterruptAt, trainer

NAMES = sorted(METHODS)
# Small options for the in-process runs (a method without an entry runs with its defaults).
OPTIONS: dict[str, dict[str, Any]] = {
    "hycam": {"num_experts": 3, "rank": 4},
    "lora": {"r": 4},
    "dora": {"r": 4},
    "molora": {"num_experts": 3, "r": 4},
    "hydralora": {"num_experts": 3, "r": 4},
}
# A structural option changed (must be refused on resume), and a setting changed (takes effect).
STRUCTURAL: dict[str, dict[str, Any]] = {
    "hycam": {"rank": 2},
    "cam": {"bias": False},
    "lora": {"r": 2},
    "dora": {"target_modules": ["q_proj"]},
    "ia3": {"target_modules": ["q_proj", "k_proj", "v_proj", "down_proj"]},
    "molora": {"num_experts": 2},
    "hydralora": {"r": 2},
}
SETTING: dict[str, dict[str, Any]] = {
    "hycam": {"tau": 0.7},
    "lora": {"lora_dropout": 0.1},
    "molora": {"balance_coef": 0.1},
    "hydralora": {"tau": 0.7},
}


def build(tmp_path, method):
    L.seed_everything(2333)
    data = MultiTaskDataModule(
        tasks=[dict(name=k, source="synthetic", path=k, num_examples=40) for k in ("arithmetic", "qa")],
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    model = MultiTaskLM(
        tiny_byte_llama(tie_word_embeddings=False),
        method=build_method(method, **OPTIONS.get(method, {})) if method != "cam" else "cam",
        learning_rate=5e-3,
    )
    return model, data


RESUME_STEPS = 4


def short_trainer(tmp_path, name, callbacks=()) -> L.Trainer:
    """``tests.training.test_resume.trainer`` with 4 steps and a checkpoint every 2."""
    return trainer(tmp_path, name, callbacks, max_steps=RESUME_STEPS, every_n_train_steps=2)


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", NAMES)
def test_resume_is_bit_identical(tmp_path, method) -> None:
    """4 steps straight, or interrupted before step 3 and resumed from step 2's checkpoint (the resume tests of
    tests/training/test_resume.py cover other interruption points)."""
    model, data = build(tmp_path, method)
    short_trainer(tmp_path, "straight").fit(model, data)
    expected = trained(model)
    model, data = build(tmp_path, method)
    with pytest.raises(Interrupt):
        short_trainer(tmp_path, "interrupted", [InterruptAt(3)]).fit(model, data)
    model, data = build(tmp_path, method)
    resumed = short_trainer(tmp_path, "resumed")
    resumed.fit(model, data, ckpt_path=tmp_path / "interrupted" / "epoch=0-step=2.ckpt")
    actual = trained(model)
    assert set(actual) == set(expected) and model.global_step == RESUME_STEPS
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("method", NAMES)
def test_cli_fit_test_and_export_reload_exactly(tmp_path, monkeypatch, method) -> None:
    config = tiny_quickstart(tmp_path, max_steps=2, val_every=2, num_examples=8)
    monkeypatch.chdir(tmp_path)
    options = ["--model.method", method]  # as the method sweep writes it: one key
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as out:
        warnings.simplefilter("ignore")
        main(["fit", "-c", str(config), *options, "--trainer.limit_val_batches", "1"])
        main(
            ["test", "-c", str(config), *options, "--ckpt_path", "last", "--trainer.limit_test_batches", "1"]
        )
    assert f"hycam_pl model summary ({method})" in out.getvalue()
    assert (
        tmp_path / "runs" / "tiny" / "version_1" / "results.json"
    ).is_file()  # the test run scored the fit
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    adapter = run / "adapter"
    if method == "full":
        assert not adapter.exists()
        return
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    module = MultiTaskLM(**{k: v for k, v in hparams.items() if k != "_instantiator"})
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    exported = export(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "exported")
    ids = torch.randint(1, 300, (2, 12))
    module.model.eval()
    with torch.no_grad():
        expected = module.model(input_ids=ids).logits
    for folder in (adapter, exported):
        fresh = MultiTaskLM(**{**hparams, "method": "full"}).model
        reloaded = resolve_method(hparams["method"]).load(fresh, str(folder)).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", NAMES)
def test_biases_and_norms_never_decay(method) -> None:
    built = resolve_method(method)
    model = built.apply(load_backbone(tiny_byte_llama()))
    groups = built.parameter_groups(model, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    for group in groups:
        if group["weight_decay"]:
            assert not any(is_bias_or_norm(names[id(p)]) for p in group["params"]), group["name"]


def _changed(method: str, change: dict[str, Any]) -> dict[str, Any]:
    spec = resolve_method(method).spec()
    return {**spec, "init_args": {**spec["init_args"], **change}}


@pytest.mark.parametrize("method", NAMES)
def test_a_structural_change_is_refused_and_a_setting_takes_effect(method) -> None:
    saved = {"method": resolve_method(method).spec()}
    assert option_conflicts({"method": method}, saved, "fit") == []
    assert option_conflicts({"method": "full" if method != "full" else "hycam"}, saved, "fit")
    if method in STRUCTURAL:
        ((key, value),) = STRUCTURAL[method].items()
        conflicts = option_conflicts({"method": _changed(method, STRUCTURAL[method])}, saved, "test")
        assert any(c.startswith(f"model.method.{key}: checkpoint ") and repr(value) in c for c in conflicts)
    if method in SETTING:
        ((key, value),) = SETTING[method].items()
        changed = {"method": _changed(method, SETTING[method])}
        assert option_conflicts(changed, saved, "fit") == []
        assert any(c.startswith(f"model.method.{key}: ") for c in changed_options(changed, saved, "fit"))
