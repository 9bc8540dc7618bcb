"""``MultiTaskLM``: a LightningModule that wraps any Hugging Face causal LM with a pluggable adaptation method."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Any

import lightning as L
import torch

from hycam_pl.methods import DEFAULT_METHOD, AdaptationMethod, resolve_method
from hycam_pl.metrics import TaskMetrics, TeacherForcedLoss
from hycam_pl.training.building import build_model
from hycam_pl.training.checkpoints import load_module
from hycam_pl.training.evaluation import (
    GenerationSettings,
    prediction_records,
    report_test_results,
    score_generations,
    write_predictions,
)
from hycam_pl.training.losses import LOSS_REDUCTIONS, per_example_nll, step_share, task_loss_terms
from hycam_pl.training.nonfinite import NonFiniteGuard
from hycam_pl.training.resume import apply_optimizer_options, check_checkpoint_fits
from hycam_pl.training.rng import TrainingRandomStream
from hycam_pl.training.schedule import cosine_schedule_with_warmup
from hycam_pl.training.sharding import (
    adamw,
    build_deferred,
    configure_model,
    logical_shapes,
    prepare_model,
    save_fit_adapter,
)
from hycam_pl.training.validation import check_tokenizer_fits

CHECKPOINTING = (False, True, "reentrant", "non_reentrant")


class MultiTaskLM(L.LightningModule):
    """A causal LM adapted to several tasks at once by a pluggable method (which decides what trains).

    Args:
        backbone: hub name, local directory, or a transformers config dict (``model_type`` + fields) for
            offline/tiny runs, randomly initialised with ``init_seed``.
        method: the adaptation method, which owns its options: a registered name with its defaults
            (``hycam_pl.methods.METHODS``) or an :class:`~hycam_pl.methods.AdaptationMethod` (in a config:
            ``class_path`` + ``init_args``).
        learning_rate: base learning rate (a method may set its own rates for some parameters).
        activation_checkpointing: False, True / "non_reentrant", or "reentrant".
        max_nonfinite_steps: stop after this many consecutive steps with a non-finite loss or gradient.
        max_scaler_skips: under fp16 loss scaling (``precision: 16-mixed``), stop after this many consecutive
            steps the GradScaler skipped (inf/NaN gradients); larger than ``max_nonfinite_steps`` because the
            scaler skips a few steps on purpose while it searches for a scale.
        loss_reduction: ``token`` (every loss token of an optimizer step weighs the same) or ``sequence``
            (every example weighs the same: the mean of each example's token mean). Either is exact over the
            whole optimizer step: independent of gradient accumulation and of the number of devices.
        predict_output: where ``predict`` writes its JSONL (default ``<log dir>/predictions.jsonl``).
        adapter: a saved adapter directory to start from (checked against the backbone before loading).
    """

    strict_loading = False  # checkpoints hold only the trainable weights; the base reloads from its source

    def __init__(
        self,
        backbone: str | dict[str, Any],
        method: str | AdaptationMethod = DEFAULT_METHOD,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.03,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        activation_checkpointing: bool | str = False,
        init_seed: int = 0,
        generation: GenerationSettings | None = None,
        max_nonfinite_steps: int = 3,
        predict_output: str | None = None,
        adapter: str | None = None,
        loss_reduction: str = "token",
        max_scaler_skips: int = 50,
    ) -> None:
        super().__init__()
        if activation_checkpointing not in CHECKPOINTING:
            raise ValueError(
                f"model.activation_checkpointing={activation_checkpointing!r} is invalid; allowed: "
                "false, true, 'reentrant', 'non_reentrant'"
            )
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"model.warmup_ratio={warmup_ratio} must be in [0, 1)")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"model.loss_reduction={loss_reduction!r} is invalid; allowed: {', '.join(LOSS_REDUCTIONS)}"
            )
        # Plain types only in hparams (and so in checkpoints): dataclasses would need unsafe unpickling.
        self.method = resolve_method(method)
        if isinstance(generation, dict):
            generation = GenerationSettings(**generation)
        self.generation = generation or GenerationSettings()
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "method": self.method.spec(),
                "learning_rate": learning_rate,
                "weight_decay": weight_decay,
                "betas": list(betas),
                "warmup_ratio": warmup_ratio,
                "dtype": dtype,
                "attn_implementation": attn_implementation,
                "activation_checkpointing": activation_checkpointing,
                "init_seed": init_seed,
                "generation": asdict(self.generation),
                "max_nonfinite_steps": max_nonfinite_steps,
                "predict_output": predict_output,
                "adapter": adapter,
                "loss_reduction": loss_reduction,
                "max_scaler_skips": max_scaler_skips,
            }
        )
        self.val_metrics: TaskMetrics | None = None
        self.test_metrics: TaskMetrics | None = None
        self.val_overall = TeacherForcedLoss()
        self.test_overall = TeacherForcedLoss()
        # Sections callbacks add to this test's results files (e.g. RoutingTelemetry's), emptied once written.
        self.extra_test_results: dict[str, dict[str, float]] = {}
        self.guard = NonFiniteGuard(max_nonfinite_steps, max_scaler_skips)
        self.random_stream = TrainingRandomStream()
        self._validations_done = 0
        self._predictions: list[dict[str, Any]] = []
        # Inside ``sharding.deferred_build()`` (sharded CLI runs) the model is built per rank in configure_model.
        if not build_deferred():
            self.model  # noqa: B018

    # ------------------------------------------------------------------------------------------- setup
    @property
    def model(self) -> torch.nn.Module:
        """The adapted backbone, built on first use (see :func:`hycam_pl.training.sharding.configure_model`)."""
        built = self._modules.get("model")
        if built is None:
            built = self.build_model()
            self.model = built  # nn.Module.__setattr__ registers it as the ``model`` submodule
        return built

    @property
    def model_built(self) -> bool:
        return self._modules.get("model") is not None

    def build_model(self, structure_only: bool = False, partitioned: bool = False) -> torch.nn.Module:
        """The backbone with the method applied, not registered (:func:`~hycam_pl.training.building.build_model`)."""
        return build_model(self.hparams, self.method, structure_only, partitioned)

    def configure_model(self) -> None:
        configure_model(self)  # plain, FSDP2-sharded or (DeepSpeed) already built; idempotent
        data = self.datamodule
        if data is not None and getattr(data, "tokenizer", None) is not None:
            check_tokenizer_fits(self.model, data.tokenizer)

    @property
    def datamodule(self):
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def setup(self, stage: str) -> None:
        data = self.datamodule
        prepare_model(self)  # DeepSpeed: the part of the build that must precede configure_model's context
        if data is None:
            return
        if self.model_built:  # otherwise checked in configure_model, once built
            check_tokenizer_fits(self.model, data.tokenizer)
        scorers = getattr(data, "scorers", {}) or {}
        if self.val_metrics is None:
            stemmer = self.generation.rouge_stemmer
            self.val_metrics = TaskMetrics(data.task_names, scorers, stemmer).to(self.device)
            self.test_metrics = TaskMetrics(data.task_names, scorers, stemmer, keep_examples=True).to(
                self.device
            )

    # ---------------------------------------------------------------------------------------- training
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(task loss, per-example NLL sums, per-example loss tokens).

        In training the task loss is this micro-batch's share of the optimizer step's objective (see
        :func:`~hycam_pl.training.losses.step_share`); otherwise it is the batch's token-mean NLL.
        """
        logits = self(batch["input_ids"], batch["attention_mask"])
        nll_sum, tokens = per_example_nll(logits, batch["labels"])
        if self.training:
            share = step_share(batch, nll_sum, tokens, self.hparams.loss_reduction, self._trainer)
            return share, nll_sum, tokens
        return nll_sum.sum() / tokens.sum().clamp_min(1), nll_sum, tokens

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        task_loss, nll_sum, tokens = self._losses(batch)
        batch_size = batch["input_ids"].shape[0]
        # Logged: this micro-batch's own mean (per token or per example), comparable between runs and
        # settings; optimised: ``loss``, the micro-batch's share of the optimizer step's objective.
        total, count = task_loss_terms(nll_sum.detach(), tokens, self.hparams.loss_reduction)
        shown = total / count.clamp_min(1)
        self.log("train/task_loss", shown, batch_size=batch_size)
        loss = task_loss
        for name, (weight, value) in self.method.auxiliary_losses(self.model).items():
            loss = loss + weight * value  # auxiliary losses keep their per-micro-batch mean semantics
            shown = shown + weight * value.detach()
            self.log(f"train/{name}", value.detach(), batch_size=batch_size)
        self.log("train/loss", shown, prog_bar=True, batch_size=batch_size)
        for group in self.trainer.optimizers[0].param_groups:
            self.log(f"train/lr/{group.get('name', 'group')}", group["lr"], batch_size=batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        # A non-finite loss is not skipped here: returning None would desynchronise DDP ranks. Its gradients
        # are non-finite too (on every rank after the all-reduce), and ``optimizer_step`` skips the update.
        return loss

    def on_train_start(self) -> None:
        # Resumed: the restored optimizer and scheduler carry the checkpoint's rates; this run's options win.
        apply_optimizer_options(self)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Logged from one hook only: Lightning keeps one entry per hook under a name, so two would go stale.
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=batch["input_ids"].shape[0])
        self.random_stream.batch_end()  # what a checkpoint saved now records

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The training random stream continues where the last training batch left it (TrainingRandomStream).
        self.random_stream.batch_start()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, closure: Any = None) -> None:
        """Skip (and count) a step whose loss or gradients are not finite (:class:`NonFiniteGuard`)."""
        self.guard.optimizer_step(self._trainer, optimizer, closure, self.global_step)

    @property
    def nonfinite_steps(self) -> int:
        return self.guard.total

    @property
    def nonfinite_in_a_row(self) -> int:
        return self.guard.in_a_row

    # -------------------------------------------------------------------------------------- evaluation
    def _evaluate(
        self, batch: dict[str, torch.Tensor], metrics: TaskMetrics, overall: TeacherForcedLoss
    ) -> None:
        _, nll_sum, tokens = self._losses(batch)
        metrics.update_loss(batch["task_ids"], nll_sum, tokens, batch.get("example_ids"))
        overall.update(nll_sum.sum(), tokens.sum())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_overall)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_overall)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._validations_done += 1
        every = self.generation.every_n_validations
        if every and not self.trainer.sanity_checking and self._validations_done % every == 0:
            score_generations(self, "validate", self.val_metrics)
        self._log_results("val", self.val_metrics, self.val_overall)

    def on_test_epoch_end(self) -> None:
        score_generations(self, "test", self.test_metrics)
        examples = self.test_metrics.examples.gathered()  # every rank takes part
        results = self._log_results("test", self.test_metrics, self.test_overall)
        results, self.extra_test_results = {**results, **self.extra_test_results}, {}
        run_dir = self.run_dir()
        if self.trainer.is_global_zero and run_dir is not None:
            report_test_results(results, examples, run_dir)

    def _log_results(self, prefix: str, metrics: TaskMetrics, overall: TeacherForcedLoss) -> dict:
        results = metrics.compute()
        total = overall.compute()
        loss = float(total["loss"])
        self.log(f"{prefix}/loss", loss, prog_bar=prefix == "val", sync_dist=False)
        self.log(f"{prefix}/ppl", float(total["ppl"]), sync_dist=False)
        for task, values in results.items():
            for name, value in values.items():
                if value is not None:  # None: not applicable to this task, nothing to log
                    self.log(f"{prefix}/{task}/{name}", float(value), sync_dist=False)
        metrics.reset()
        overall.reset()
        return results

    # ------------------------------------------------------------------------------------------ predict
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        records = prediction_records(self, batch)
        self._predictions.extend(records)
        return records

    def on_predict_epoch_end(self) -> None:
        write_predictions(self, self._predictions)
        self._predictions = []

    # ------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = self.method.parameter_groups(self.model, hp.learning_rate, hp.weight_decay)
        if not groups:
            raise ValueError(f"model.method={self.method.name!r} left no trainable parameters")
        optimizer = adamw(self, groups, hp.learning_rate, tuple(hp.betas))  # DeepSpeed's under ZeRO-Offload
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(math.ceil(hp.warmup_ratio * total))
        scheduler = cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------------------- checkpoints
    def trainable_keys(self) -> set[str]:
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Through the one checkpoint reader, earlier releases' options translated (``checkpoints.load_module``)."""
        return load_module(cls, checkpoint_path, *args, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["hycam_rng_state"] = self.random_stream.states_to_save(self._trainer)
        checkpoint["hycam_counters"] = {
            "nonfinite_steps": self.nonfinite_steps,
            "validations": self._validations_done,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_fits(self.trainable_keys(), set(self.state_dict()), logical_shapes(self), checkpoint)
        trainer = self._trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.random_stream.restore(checkpoint.get("hycam_rng_state"), rank, world)
        counters = checkpoint.get("hycam_counters", {})
        self.guard.total = counters.get("nonfinite_steps", 0)
        self._validations_done = counters.get("validations", 0)

    def on_fit_end(self) -> None:
        run_dir = self.run_dir()
        if run_dir is not None and self.method.exports_adapter:
            save_fit_adapter(self, os.path.join(run_dir, "adapter"))  # gathers sharded weights first

    def run_dir(self) -> str | None:
        trainer = self._trainer
        if trainer is None:
            return None
        log_dir = trainer.log_dir
        return log_dir if log_dir else trainer.default_root_dir
