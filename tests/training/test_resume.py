"""Resuming from a mid-epoch checkpoint ends with the same adapter weights as an uninterrupted run."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hycam_pl import adapter_state_dict
from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods import HyCAMMethod
from hycam_pl.training import MultiTaskLM
from tests.tiny import tiny_byte_llama

BACKBONE = tiny_byte_llama(tie_word_embeddings=False)
MAX_STEPS = 10


class Interrupt(Exception):
    pass


class InterruptAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupt(f"interrupted before step {self.step}")


def build(tmp_path):
    L.seed_everything(2333)
    data = MultiTaskDataModule(
        tasks=[dict(name=k, source="synthetic", path=k, num_examples=40) for k in ("arithmetic", "qa")],
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    model = MultiTaskLM(BACKBONE, method=HyCAMMethod(num_experts=3, rank=4), learning_rate=5e-3)
    return model, data


def trainer(tmp_path, name, callbacks=(), max_steps=MAX_STEPS, every_n_train_steps=3):
    """A deterministic CPU trainer with no logger or validation, checkpointing every ``every_n_train_steps``."""
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / name, every_n_train_steps=every_n_train_steps, save_top_k=-1, save_last=True
    )
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[checkpoints, *callbacks],
        deterministic=True,
        default_root_dir=tmp_path,
    )


@pytest.mark.parametrize("interrupt_at", [4, 7])
def test_resume_mid_epoch_matches_uninterrupted(tmp_path, interrupt_at):
    model, data = build(tmp_path)
    trainer(tmp_path, "straight").fit(model, data)
    expected = adapter_state_dict(model.model)
    assert data.report is not None and model.global_step == MAX_STEPS
    epoch_batches = len(data.train_dataloader())
    assert epoch_batches > MAX_STEPS  # every checkpoint is mid-epoch

    model, data = build(tmp_path)
    with pytest.raises(Interrupt):
        trainer(tmp_path, "interrupted", [InterruptAt(interrupt_at)]).fit(model, data)
    saved = 3 if interrupt_at == 4 else 6
    checkpoint = tmp_path / "interrupted" / f"epoch=0-step={saved}.ckpt"
    assert checkpoint.is_file() and torch.load(checkpoint, weights_only=False)["global_step"] == saved

    model, data = build(tmp_path)  # a fresh process would rebuild everything from the config
    trainer(tmp_path, "resumed").fit(model, data, ckpt_path=checkpoint)
    actual = adapter_state_dict(model.model)
    assert model.global_step == MAX_STEPS
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=0, msg=name)


def test_a_folder_that_is_no_checkpoint_is_refused_with_one_line(tmp_path):
    from hycam_pl.training.checkpoints import read_checkpoint

    folder = tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)  # looks like a DeepSpeed folder, but holds nothing
    with pytest.raises(
        ValueError, match=r"--ckpt_path: .*last\.ckpt is a directory, neither a checkpoint file"
    ):
        read_checkpoint(folder, "--ckpt_path")
