"""Through the Lightning stack: resuming a run of every baseline is bit-identical on CPU, and
``hycam fit -c configs/tiny.yaml --model.method <m>`` trains and exports a reloadable adapter for every method."""

from __future__ import annotations

import contextlib
import io
import warnings

import lightning as L
import pytest
import torch

from hycam_pl.cli import main
from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods import METHODS, resolve_method
from hycam_pl.training import MultiTaskLM
from tests.methods.helpers import build as build_method
from tests.tiny import tiny_byte_llama
from tests.training.conftest import tiny_quickstart
from tests.training.test_resume import Interrupt, InterruptAt, trainer

OPTIONS = {
    "lora": {"r": 4},
    "dora": {"r": 4},
    "ia3": {},
    "molora": {"num_experts": 3, "r": 4},
    "hydralora": {"num_experts": 3, "r": 4},
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
        method=build_method(method, **OPTIONS[method]),
        learning_rate=5e-3,
    )
    return model, data


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.model.named_parameters() if p.requires_grad}


# Every baseline (hycam and cam: tests/training/test_resume.py); peft's dropout RNG, the mixtures' Gumbel noise
@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "molora", "hydralora"])
def test_resume_is_bit_identical(tmp_path, method) -> None:
    model, data = build(tmp_path, method)
    trainer(tmp_path, "straight").fit(model, data)
    expected = trained(model)
    model, data = build(tmp_path, method)
    with pytest.raises(Interrupt):
        trainer(tmp_path, "interrupted", [InterruptAt(7)]).fit(model, data)
    model, data = build(tmp_path, method)
    trainer(tmp_path, "resumed").fit(model, data, ckpt_path=tmp_path / "interrupted" / "epoch=0-step=6.ckpt")
    actual = trained(model)
    assert set(actual) == set(expected) and model.global_step == 10
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cli_fit_switches_method_with_one_option(tmp_path, monkeypatch, method) -> None:
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
    fresh = MultiTaskLM(**{**hparams, "method": "full"}).model
    reloaded = resolve_method(hparams["method"]).load(fresh, str(adapter))
    ids = torch.randint(1, 300, (2, 12))
    module.model.eval(), reloaded.eval()
    with torch.no_grad():
        expected = module.model(input_ids=ids).logits
        actual = reloaded(input_ids=ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
