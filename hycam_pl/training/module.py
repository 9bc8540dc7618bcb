"""``MultiTaskLM``: a LightningModule that wraps any Hugging Face causal LM with a pluggable adaptation method."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import lightning as L
import torch

from hycam_pl.backbone import load_backbone
from hycam_pl.io import write_text_atomically
from hycam_pl.methods import build_method
from hycam_pl.metrics import (
    TaskMetrics,
    TeacherForcedLoss,
    format_results_table,
    write_examples,
    write_results,
)
from hycam_pl.modulation import HyCAMConfig, is_attached, routing_statistics, without_routing_records
from hycam_pl.training.losses import LOSS_REDUCTIONS, per_example_nll, task_loss_terms
from hycam_pl.training.resume import apply_optimizer_options, shape_mismatches
from hycam_pl.training.sharding import (
    adamw,
    backbone_structure,
    build_deferred,
    configure_model,
    logical_shapes,
    meta_backbone,
    needs_synced_generation,
    prepare_model,
    save_fit_adapter,
    synchronised_batches,
)
from hycam_pl.training.validation import check_tokenizer_fits, load_initial_adapter

CHECKPOINTING = (False, True, "reentrant", "non_reentrant")
log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """How evaluation and ``predict`` generate: batched left-padded prompts, ``data.eval_batch_size`` at a time."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    every_n_validations: int = 0  # 0: generation metrics only in ``test``; N: also every N-th validation
    rouge_stemmer: bool = True  # ROUGE with the Porter stemmer, as most papers report it

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"model.generation.max_new_tokens={self.max_new_tokens} must be >= 1")


class MultiTaskLM(L.LightningModule):
    """A frozen (or, for ``method: full``, trainable) causal LM adapted to several tasks at once.

    Args:
        backbone: hub name, local directory, or a transformers config dict (``model_type`` + fields) for
            offline/tiny runs, randomly initialised with ``init_seed``.
        method: ``hycam`` | ``cam`` | ``full`` | ``lora`` | ``dora`` | ``ia3`` | ``molora`` | ``hydralora`` (or any
            registered method).
        hycam: the HyCAM configuration (``hycam``/``cam``; the reference of a parameter-matched ``lora``).
        method_options: the other methods' own options (e.g. ``{r: 16, target_modules: [q_proj, v_proj]}``).
        learning_rate: base learning rate; ``shared_lr`` and ``expert_lr`` override it for the shared CAM and for
            the specialised CAMs + router.
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
        method: str = "hycam",
        hycam: HyCAMConfig | None = None,
        method_options: dict[str, Any] | None = None,
        learning_rate: float = 2e-5,
        shared_lr: float | None = None,
        expert_lr: float | None = None,
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
        if max_nonfinite_steps < 1:
            raise ValueError(f"model.max_nonfinite_steps={max_nonfinite_steps} must be >= 1")
        if max_scaler_skips < 1:
            raise ValueError(f"model.max_scaler_skips={max_scaler_skips} must be >= 1")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"model.loss_reduction={loss_reduction!r} is invalid; allowed: {', '.join(LOSS_REDUCTIONS)}"
            )
        # Plain types only in hparams (and so in checkpoints): dataclasses would need unsafe unpickling.
        if isinstance(hycam, dict):
            hycam = HyCAMConfig.from_dict(hycam)
        if isinstance(generation, dict):
            generation = GenerationSettings(**generation)
        self.generation = generation or GenerationSettings()
        self.save_hyperparameters(
            {
                "backbone": backbone,
                "method": method,
                "hycam": hycam.to_dict() if hycam is not None else None,
                "method_options": method_options,
                "learning_rate": learning_rate,
                "shared_lr": shared_lr,
                "expert_lr": expert_lr,
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
        self.method = build_method(method, hycam=hycam, method_options=method_options)
        # The backbone is built at the end of the constructor, or, inside ``sharding.deferred_build()`` (the
        # CLI under FSDP/DeepSpeed), lazily in ``configure_model``: sharded strategies build it per rank there,
        # without every rank holding a full copy first.
        self.val_metrics: TaskMetrics | None = None
        self.test_metrics: TaskMetrics | None = None
        self.val_overall = TeacherForcedLoss()
        self.test_overall = TeacherForcedLoss()
        # Sections beside the tasks that callbacks add to this test's results files (written after their
        # ``on_test_epoch_end``), e.g. RoutingTelemetry's ``routing``; emptied once written.
        self.extra_test_results: dict[str, dict[str, float]] = {}
        self.nonfinite_steps = 0
        self.nonfinite_in_a_row = 0
        self._validations_done = 0
        self._pending_rng_state: dict[str, Any] | None = None
        self._train_rng_state: dict[str, Any] | None = None
        self._in_train_batch = False
        self._predictions: list[dict[str, Any]] = []
        # Rank 0's full build under ZeRO-3, from setup to configure_model (a list: not a registered submodule).
        self._zero3_source: list[torch.nn.Module] = []
        if not build_deferred():  # inside sharding.deferred_build() (sharded CLI runs): in configure_model
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
        """The backbone with the method applied (not registered). ``structure_only``: on the meta device, no
        weights read (the FSDP2 build loads them into each rank's shards afterwards); ``partitioned``: the same
        structure allocated where the surrounding context puts it (ZeRO-3's ``zero.Init``: partitioned)."""
        hp = self.hparams
        if structure_only:
            model = meta_backbone(hp.backbone, hp.dtype, hp.attn_implementation)
        elif partitioned:
            model = backbone_structure(hp.backbone, hp.dtype, hp.attn_implementation)
        else:
            with torch.device("cpu"):  # as before: the same weights whatever device the trainer uses
                model = load_backbone(
                    hp.backbone,
                    dtype=hp.dtype,
                    attn_implementation=hp.attn_implementation,
                    init_seed=hp.init_seed,
                )
        model = self.method.apply(model)
        if hp.adapter is not None and not (structure_only or partitioned):
            load_initial_adapter(model, hp.adapter)
        if hp.activation_checkpointing:
            reentrant = hp.activation_checkpointing == "reentrant"
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        # ``from_pretrained`` returns a model in eval mode, and Lightning (>= 2.2) keeps the modes it finds at
        # the start of fit: without this, HyCAM's router would route by noise-free argmax during training
        # (no Gumbel noise, no straight-through gradient: the router collapses) and peft's dropout would be
        # off. Evaluation loops still switch to eval mode and back.
        return model.train()

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
        :meth:`_step_share`); otherwise it is the batch's token-mean NLL.
        """
        logits = self(batch["input_ids"], batch["attention_mask"])
        nll_sum, tokens = per_example_nll(logits, batch["labels"])
        if self.training:
            return self._step_share(batch, nll_sum, tokens), nll_sum, tokens
        return nll_sum.sum() / tokens.sum().clamp_min(1), nll_sum, tokens

    def _step_share(
        self, batch: dict[str, torch.Tensor], nll_sum: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """This micro-batch's summed loss divided by the count of its whole optimizer step, times the
        ``accumulate * world_size`` that Lightning (dividing each micro-batch by ``accumulate_grad_batches``)
        and DDP (averaging over ranks) divide by: the step's gradient is then exactly that of the objective
        over all its examples, however they are split into micro-batches and ranks.

        The step's count comes with the batch (``loss_tokens``/``loss_examples``, from the datamodule's
        sampler, which knows every rank's micro-batches in advance). Without it, a step of one micro-batch
        per rank still works (the count is summed over ranks here); accumulation needs it.
        """
        reduction = self.hparams.loss_reduction
        total, count = task_loss_terms(nll_sum, tokens, reduction)
        accumulate, world = (
            (int(self.trainer.accumulate_grad_batches), int(self.trainer.world_size))
            if self._trainer is not None
            else (1, 1)
        )
        key = "loss_tokens" if reduction == "token" else "loss_examples"
        if key in batch:
            count = batch[key]
        elif accumulate > 1:
            raise ValueError(
                "gradient accumulation needs the token counts of each optimizer step, which batches from "
                "MultiTaskDataModule carry (loss_tokens/loss_examples); these batches have none"
            )
        elif world > 1 and torch.distributed.is_initialized():
            count = count.detach().clone()
            torch.distributed.all_reduce(count)
        return total * (accumulate * world / count.clamp_min(1).to(total.dtype))

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
        # The training random stream as it stands after this batch (what a checkpoint saved now records).
        self._train_rng_state = _rng_state()
        self._in_train_batch = False

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Continue the training random stream (Gumbel noise, dropout) where the last training batch left it.

        Whatever ran in between (validation creating its DataLoader iterator, sampled generation, callbacks)
        may have drawn from the global generators; a run resumed from a checkpoint saved at the end of that
        batch would not replay those draws. Restoring the state captured at the end of each batch makes the
        training stream independent of evaluation, so an interrupted and resumed run draws exactly the same
        noise as an uninterrupted one, whatever runs on the checkpoint steps.
        """
        state, self._pending_rng_state = self._pending_rng_state or self._train_rng_state, None
        if state is not None:
            _set_rng_state(state)
        self._in_train_batch = True

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Skip (and count) a step whose loss or gradients are not finite, instead of corrupting the weights.

        Under fp16 loss scaling (``precision: 16-mixed``) the GradScaler skips overflowing steps itself (and
        lowers its scale); those steps are counted too, against the larger ``max_scaler_skips``, since the
        scaler skips some on purpose while it searches for a scale, but a model that overflows at every
        scale would otherwise skip steps forever.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scale = scaler.get_scale()
            optimizer.step(closure=optimizer_closure)
            self._record_scaler_step(scale, scaler.get_scale())
            return

        def closure_with_check():
            loss = optimizer_closure() if optimizer_closure is not None else None
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            # One host synchronisation for all tensors, not one per parameter.
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
            if finite:
                self.nonfinite_in_a_row = 0
                return loss
            optimizer.zero_grad(set_to_none=True)
            finite_loss = loss is not None and bool(torch.isfinite(torch.as_tensor(loss)).all())
            self._record_nonfinite("gradient" if finite_loss else "loss")
            return loss

        optimizer.step(closure=closure_with_check)

    def _record_scaler_step(self, scale_before: float, scale_after: float) -> None:
        """The GradScaler lowers its scale exactly when it found inf/NaN gradients and skipped the step."""
        if scale_after < scale_before:
            self._record_nonfinite("gradient (skipped by the fp16 GradScaler)", "max_scaler_skips")
        else:
            self.nonfinite_in_a_row = 0

    def _record_nonfinite(self, what: str, option: str = "max_nonfinite_steps") -> None:
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        limit = self.hparams[option]
        if self.nonfinite_in_a_row >= limit:
            last_good = _last_checkpoint(self.trainer)
            raise FloatingPointError(
                f"non-finite {what} at global step {self.global_step} "
                f"({self.nonfinite_in_a_row} steps in a row, limit model.{option}={limit}); "
                f"last good checkpoint: {last_good or 'none saved yet'}"
            )

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
            self._score_generations("validate", self.val_metrics)
        self._log_results("val", self.val_metrics, self.val_overall)

    def on_test_epoch_end(self) -> None:
        self._score_generations("test", self.test_metrics)
        examples = self.test_metrics.examples.gathered()  # every rank takes part
        results = self._log_results("test", self.test_metrics, self.test_overall)
        results, self.extra_test_results = {**results, **self.extra_test_results}, {}
        run_dir = self.run_dir()
        if self.trainer.is_global_zero and run_dir is not None:
            json_path, md_path = write_results(results, run_dir)
            where = f"{json_path}, {md_path}"
            if examples:  # batches from MultiTaskDataModule carry example ids; plain loaders may not
                where += f"; per example: {write_examples(examples, run_dir)}"
            print(f"\nPer-task test results ({where}):")
            print(format_results_table(results))

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

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy or sampled continuations of a left-padded prompt batch: (prompt + new ids, their mask).

        The mask covers the prompt's real tokens and the new tokens up to and including the first EOS.
        """
        tokenizer = self.datamodule.tokenizer
        settings = self.generation
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.do_sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        if self._trainer is not None and needs_synced_generation(self.trainer):
            kwargs["synced_gpus"] = True  # sharded weights: every rank runs every step until all are done
        with without_routing_records(self.model):
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new = output[:, input_ids.shape[1] :]
        is_eos = (new == tokenizer.eos_token_id).long()
        after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0
        return output, torch.cat([attention_mask, (~after_eos).long()], dim=1)

    def generate_batch(self, batch: dict[str, Any]) -> list[str]:
        """Decoded continuations (special tokens dropped) of a left-padded prompt batch."""
        output, _ = self.generate_ids(batch)
        prompt_length = batch["input_ids"].shape[1]
        return self.datamodule.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)

    def _score_generations(self, stage: str, metrics: TaskMetrics) -> None:
        data = self.datamodule
        if data is None or not hasattr(data, "generation_dataloader"):
            raise ValueError(
                f"{stage} with generation scoring needs a MultiTaskDataModule (trainer.{stage}(model, datamodule=...)); "
                "plain dataloaders carry no prompts and references"
            )
        loader = data.generation_dataloader(stage)
        was_training = self.model.training
        self.model.eval()
        for batch, real in synchronised_batches(loader, self):
            predictions = self.generate_batch(batch)
            if real:  # a padding batch only keeps this rank in step with the others (sharded weights)
                metrics.update_generation_by_id(
                    batch["task_ids"], predictions, batch["references"], batch.get("example_ids")
                )
        self.model.train(was_training)

    # ------------------------------------------------------------------------------------------ predict
    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[dict[str, Any]]:
        output, mask = self.generate_ids(batch)
        prompt_length = batch["input_ids"].shape[1]
        responses = self.datamodule.tokenizer.batch_decode(
            output[:, prompt_length:], skip_special_tokens=True
        )
        routing = self._routing_summaries(output, mask)
        records = []
        for i, response in enumerate(responses):
            record = {"task": batch["tasks"][i], "prompt": batch["prompts"][i], "response": response}
            if routing is not None:
                record["routing"] = routing[i]
            records.append(record)
        self._predictions.extend(records)
        return records

    @torch.no_grad()
    def _routing_summaries(self, ids: torch.Tensor, mask: torch.Tensor) -> list[dict[str, Any]] | None:
        """Per example: the mean expert load over layers on exactly the generated prompt + response tokens."""
        if not is_attached(self.model) or not self.method.config.num_experts:
            return None
        self.model(input_ids=ids, attention_mask=mask, use_cache=False)
        stats = routing_statistics(self.model)
        loads = torch.stack(
            [s.example_gate_sum / s.example_tokens.clamp_min(1).unsqueeze(-1) for s in stats.values()]
        )
        return [
            {"expert_load": [round(float(v), 4) for v in row], "top_expert": int(row.argmax())}
            for row in loads.mean(0).cpu()
        ]

    def on_predict_epoch_end(self) -> None:
        path = self.hparams.predict_output or (
            os.path.join(self.run_dir(), "predictions.jsonl") if self.run_dir() else "predictions.jsonl"
        )
        records = self._predictions
        if self.trainer.world_size > 1:  # each rank predicted a shard; rank 0 writes them all
            parts: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, records)
            # Lightning's predict sampler gives rank r the items r, r + W, ...: interleave back to file order.
            records = [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]
        if self.trainer.is_global_zero:
            write_text_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            print(f"Wrote {len(records)} predictions to {path}")
        self._predictions = []

    # ------------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        overrides = {k: v for k, v in (("shared", hp.shared_lr), ("experts", hp.expert_lr)) if v is not None}
        groups = self.method.parameter_groups(self.model, hp.learning_rate, hp.weight_decay, overrides)
        if not groups:
            raise ValueError(f"model.method={hp.method!r} left no trainable parameters")
        optimizer = adamw(self, groups, hp.learning_rate, tuple(hp.betas))  # DeepSpeed's under ZeRO-Offload
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(math.ceil(hp.warmup_ratio * total))
        scheduler = cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------------------- checkpoints
    def trainable_keys(self) -> set[str]:
        return {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        # Every rank's own generator state (each draws its own Gumbel noise); only rank 0 writes the file.
        # Between training batches (e.g. a checkpoint saved after validation) this is the training stream
        # captured at the end of the last batch, not what evaluation left in the global generators (see
        # ``on_train_batch_start``); during a batch (``every_n_train_steps`` saves) it is the current state.
        between = not self._in_train_batch and self._train_rng_state is not None
        state = self._train_rng_state if between else _rng_state()
        states = [state]
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            states = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, state)
        checkpoint["hycam_rng_state"] = states
        checkpoint["hycam_counters"] = {
            "nonfinite_steps": self.nonfinite_steps,
            "validations": self._validations_done,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" not in checkpoint:  # a sharded strategy loaded the weights itself (and popped them)
            checkpoint = {**checkpoint, "state_dict": {k: None for k in self.trainable_keys()}}
        saved = set(checkpoint.get("state_dict", {}))
        missing = sorted(self.trainable_keys() - saved)
        unexpected = sorted(saved - set(self.state_dict()))
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit this model: {len(missing)} trainable tensors missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
                "was it trained with a different method, backbone or hycam config?"
            )
        reshaped = shape_mismatches(logical_shapes(self), checkpoint.get("state_dict", {}))
        if reshaped:
            raise ValueError(
                f"checkpoint does not fit this model: {len(reshaped)} tensors have other shapes (e.g. "
                f"{'; '.join(reshaped[:2])}); was it trained with a different model.hycam or model.backbone?"
            )
        states = checkpoint.get("hycam_rng_state")
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        )
        if isinstance(states, list) and len(states) != world:
            log.warning(
                "checkpoint holds random states of %d processes but this run has %d; the Gumbel noise after "
                "resuming will differ from the interrupted run",
                len(states),
                world,
            )
        self._pending_rng_state = states[rank] if isinstance(states, list) and rank < len(states) else None
        counters = checkpoint.get("hycam_counters", {})
        self.nonfinite_steps = counters.get("nonfinite_steps", 0)
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


def cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``transformers.get_cosine_schedule_with_warmup`` (half a cosine), the same function of the step, without
    importing ``transformers.optimization``, which imports peft and accelerate (~25 MB) into every run."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_cosine_factor, warmup=warmup, total=total))


def _cosine_factor(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def _rng_state() -> dict[str, Any]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available() and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    callback = getattr(trainer, "checkpoint_callback", None)
    if callback is None:
        return None
    return getattr(callback, "last_model_path", None) or getattr(callback, "best_model_path", None) or None
