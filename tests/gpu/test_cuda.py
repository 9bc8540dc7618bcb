"""CUDA checks (bf16 training, cached generation, a CLI fit on the GPU). They need a GPU: skipped on CPU-only
machines such as CI's; run them where one exists with ``python -m pytest -m gpu tests/gpu``."""

import pytest
import torch

from hycam_pl import HyCAMConfig, attach, balance_loss
from tests.modulation.conftest import batch, randomize_adapter, tiny_model
from tests.training.conftest import run_cli, tiny_quickstart

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]


def test_bf16_backbone_identity_and_training_step_on_cuda():
    model = tiny_model("llama", "sdpa").to("cuda", torch.bfloat16)
    input_ids, mask = (t.cuda() for t in batch())
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=mask).logits
    attach(model, HyCAMConfig(num_experts=4, rank=4))
    with torch.no_grad():
        assert torch.equal(model(input_ids=input_ids, attention_mask=mask).logits, before)
    randomize_adapter(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
        loss = out.loss + 0.01 * balance_loss(model)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".hycam." in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if ".hycam." in n)


def test_cached_generation_on_cuda():
    model = tiny_model("qwen2", "sdpa").cuda()
    attach(model, HyCAMConfig(num_experts=2, rank=4))
    randomize_adapter(model)
    input_ids, mask = (t.cuda() for t in batch(batch_size=1, pad_first=0))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(input_ids=input_ids, attention_mask=mask, use_cache=True, **kwargs)
        uncached = model.generate(input_ids=input_ids, attention_mask=mask, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_cli_fit_and_test_on_gpu_in_bf16(tmp_path):
    config = tiny_quickstart(tmp_path, max_steps=8, val_every=4)
    gpu = ("--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed")
    run_cli("fit", "-c", str(config), *gpu, cwd=tmp_path)
    result = run_cli("test", "-c", str(config), "--ckpt_path", "last", *gpu, cwd=tmp_path)
    assert "Per-task test results" in result.stdout
