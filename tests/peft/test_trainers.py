"""``transformers.Trainer`` and TRL's ``SFTTrainer`` train HyCAM created by peft, with the balance loss in the loss."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from hycam_pl.peft import HyCAMPeftConfig

from .conftest import tiny_model


def _examples(count: int = 8, length: int = 12, vocab: int = 96) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(count):
        ids = torch.randint(1, vocab, (length,), generator=generator)
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return rows


def _train(tmp_path, balance_coef: float):
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(tiny_model(), HyCAMPeftConfig(num_experts=3, rank=4, balance_coef=balance_coef))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(
        output_dir=str(tmp_path / f"run-{balance_coef}"),
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_examples())
    trainer.train()
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return before, after, losses


def test_trainer_trains_hycam_and_the_balance_loss_moves_the_routers(tmp_path):
    before, with_balance, losses = _train(tmp_path, balance_coef=1.0)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert all(
        not torch.equal(before[n], with_balance[n]) for n in before if ".router." in n or ".shared." in n
    )
    _, without, _ = _train(
        tmp_path, balance_coef=0.0
    )  # same data, seed and noise: only the balance term differs
    routers = [n for n in before if ".router." in n]
    assert routers and all(not torch.equal(with_balance[n], without[n]) for n in routers)


def test_trl_sft_trainer_takes_a_hycam_peft_config(tmp_path):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import ByT5Tokenizer

    from tests.tiny import tiny_byte_llama

    tokenizer = ByT5Tokenizer()
    values = tiny_byte_llama()
    values.pop("model_type")
    model = tiny_model(**values)
    texts = ["2 + 3 = 5", "7 - 4 = 3", "6 * 2 = 12", "9 / 3 = 3"]
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        max_length=32,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        peft_config=HyCAMPeftConfig(num_experts=2, rank=4),
    )
    routers = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".router." in n}
    trainer.train()
    assert routers and all(
        not torch.equal(p, routers[n]) for n, p in trainer.model.named_parameters() if n in routers
    )
    assert [e["loss"] for e in trainer.state.log_history if "loss" in e]
