"""Evaluation is deterministic, training routing is stochastic, KV-cache generation equals cache-free decoding."""

import pytest
import torch

from hycam_pl import HyCAMConfig, attach

from .conftest import FAMILY_ATTENTION, batch, randomize_adapter, tiny_model


def trained_looking(family="llama", attn="eager", num_experts=4, **config):
    model = tiny_model(family, attn)
    torch.manual_seed(0)
    attach(model, HyCAMConfig(num_experts=num_experts, rank=4, **config))
    randomize_adapter(model, scale=2.0)
    return model


def test_eval_is_deterministic_and_training_routing_is_stochastic():
    model = trained_looking()
    input_ids, mask = batch()
    with torch.no_grad():
        first = model(input_ids=input_ids, attention_mask=mask).logits
        second = model(input_ids=input_ids, attention_mask=mask).logits
        model.train()
        noisy = [model(input_ids=input_ids, attention_mask=mask).logits for _ in range(3)]
    assert torch.equal(first, second)
    assert not torch.allclose(noisy[0], noisy[1]) or not torch.allclose(noisy[1], noisy[2])


@pytest.mark.parametrize("family,attn", FAMILY_ATTENTION)
def test_greedy_generate_with_cache_equals_without(family, attn):
    model = trained_looking(
        family, attn, apply_to="residual_sum" if family == "gemma2" else "attention_output"
    )
    input_ids, mask = batch(batch_size=1, length=5, pad_first=0)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(input_ids=input_ids, attention_mask=mask, use_cache=True, **kwargs)
        uncached = model.generate(input_ids=input_ids, attention_mask=mask, use_cache=False, **kwargs)
    assert cached.shape[1] == 13
    assert torch.equal(cached, uncached)


def test_left_padded_batched_generation_matches_single_prompts():
    model = trained_looking()
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    long = torch.tensor([[5, 6, 7, 8, 9]])
    short = torch.tensor([[11, 12, 13]])
    padded = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])
    padded_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        together = model.generate(input_ids=padded, attention_mask=padded_mask, **kwargs)
        alone = model.generate(input_ids=short, attention_mask=torch.ones_like(short), **kwargs)
        alone_long = model.generate(input_ids=long, attention_mask=torch.ones_like(long), **kwargs)
    assert torch.equal(together[1, 2:], alone[0])
    assert torch.equal(together[0], alone_long[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_and_stays_close(dtype):
    model = trained_looking()
    input_ids, mask = batch()
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=dtype):
            low = model(input_ids=input_ids, attention_mask=mask).logits
    assert low.dtype == dtype
    torch.testing.assert_close(low.float(), full, rtol=0.1, atol=0.1)
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        out = model(input_ids=input_ids, attention_mask=mask, labels=input_ids)
    out.loss.backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32
        for n, p in model.named_parameters()
        if ".hycam." in n
    )


def test_bf16_backbone_with_float32_adapter():
    model = trained_looking().to(torch.bfloat16)
    for name, param in model.named_parameters():
        if ".hycam." in name:
            param.data = param.data.float()  # the adapter stays float32 on a bf16 backbone (dtype="float32")
    input_ids, mask = batch()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_torch_compile_matches_eager():
    model = trained_looking()
    input_ids, mask = batch()
    with torch.no_grad():
        eager = model(input_ids=input_ids, attention_mask=mask).logits
        compiled = torch.compile(model, backend="aot_eager")
        out = compiled(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    model.train()
    compiled_train = torch.compile(model, backend="aot_eager")
    loss = compiled_train(input_ids=input_ids, attention_mask=mask, labels=input_ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".hycam.shared." in n)


def test_torch_compile_inductor_matches_eager():
    """The default backend generates real kernels (C++ on CPU); the hooks must survive code generation."""
    model = trained_looking()
    input_ids, mask = batch()
    with torch.no_grad():
        eager = model(input_ids=input_ids, attention_mask=mask).logits
        out = torch.compile(model)(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
