"""RunRecord (what a sweep copies into result.json): a fit from scratch then a resumed one on a tiny model, and
a parameter-matched LoRA whose effective rank and alpha exist only in the peft config it was built with."""

from __future__ import annotations

import json

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from hycam_pl.callbacks import RunRecord
from hycam_pl.callbacks.record import RUN_RECORD
from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods import HyCAMMethod, LoRAMethod
from hycam_pl.training import MultiTaskLM
from tests.tiny import tiny_byte_llama

BACKBONE = tiny_byte_llama(tie_word_embeddings=False)


def fit(tmp_path, model, max_steps, ckpt_path=None, validate=True):
    L.seed_everything(0)
    data = MultiTaskDataModule(
        tasks=[dict(name=k, source="synthetic", path=k, num_examples=16) for k in ("arithmetic", "qa")],
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=2 if validate else None,
        limit_val_batches=1 if validate else 0,
        num_sanity_val_steps=0,
        callbacks=[
            ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0),
            RunRecord(),
        ],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return json.loads((tmp_path / RUN_RECORD).read_text())


def test_scratch_then_resumed_with_counts_validation_loss_and_versions(tmp_path) -> None:
    record = fit(
        tmp_path,
        MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=2, rank=4), learning_rate=1e-3),
        max_steps=2,
    )
    assert record["fit"] == {"resumed": False, "from_step": 0, "to_step": 2}
    assert record["method"] == "hycam"
    assert [v for k, v in record["effective_options"].items() if k.endswith(".num_experts")] == [2]
    counts = record["parameters"]
    assert 0 < counts["trainable"] < counts["total"]
    assert counts["trainable"] == counts["by_component"]["total"]["trainable"]
    assert record["validation"]["val/macro/loss"] > 0
    assert len(record["code"]["commit"]) == 40 and set(record["versions"]) >= {
        "torch",
        "transformers",
        "peft",
    }

    model = MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=2, rank=4), learning_rate=1e-3)
    resumed = fit(tmp_path, model, max_steps=3, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert resumed["fit"] == {"resumed": True, "from_step": 2, "to_step": 3}
    assert resumed["parameters"] == counts


def test_parameter_matched_lora_records_the_rank_and_alpha_peft_applied(tmp_path) -> None:
    model = MultiTaskLM(
        BACKBONE,
        method=LoRAMethod(match_hycam={"num_experts": 2, "rank": 4}),
        learning_rate=1e-3,
    )
    record = fit(tmp_path, model, max_steps=1, validate=False)
    options = record["effective_options"]
    # chosen at build time, not configured: only peft's config knows them
    assert options["peft.r"] >= 1 and options["peft.lora_alpha"] == 2 * options["peft.r"]
    assert "peft.target_modules" in options and options["method.match_hycam"] == {"num_experts": 2, "rank": 4}
    assert record["validation"]["val/macro/loss"] is None  # no validation ran
    # the machine's path of the backbone stays out of the record (committed experiments must not name it)
    assert "base_model_name_or_path" not in record["options"]["peft"]["default"]
