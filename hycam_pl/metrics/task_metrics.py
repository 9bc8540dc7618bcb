"""Per-task evaluation metrics for a multi-task model, as one ``nn.Module``.

Each task owns its own metric objects (never shared), so a mixed batch is split by task id and
no task's examples can leak into another task's numbers. Being an ``nn.Module`` (a tree of
torchmetrics ``Metric``s inside ``ModuleDict``s) it can be a child of a LightningModule: it moves
devices with the model, its states stay out of checkpoints (torchmetrics states are
non-persistent), and every value is synchronised across processes on ``compute()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from hycam_pl.metrics.generation import GenerationMetrics
from hycam_pl.metrics.per_example import ExampleResults
from hycam_pl.metrics.task_score import Scorer
from hycam_pl.metrics.teacher_forced import TeacherForcedLoss

MACRO = "macro"
"""Key of the cross-task average in :meth:`TaskMetrics.compute`; not allowed as a task name."""

Results = dict[str, dict[str, float | None]]
"""``{task: {metric: value}}``; ``None`` is a metric not applicable to the task (shown as "n/a")."""


class TaskMetrics(nn.Module):
    """Teacher-forced loss/perplexity and generation metrics, one independent set per task.

    Args:
        task_names: tasks in task-id order (``task_names[i]`` is task id ``i``). Names become
            ``ModuleDict`` keys, so they must be non-empty and contain no ``"."``.
        scorers: optional task-specific ``scorer(prediction, reference) -> float`` per task
            name, reported as ``"task_score"`` for the tasks that have one.
        rouge_stemmer: ROUGE with the Porter stemmer, as rouge_score's ``use_stemmer`` (default True).
        keep_examples: also keep every example's loss, answer and scores by example id (``examples``, an
            :class:`~hycam_pl.metrics.per_example.ExampleResults`) for the updates that pass ``example_ids``.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        scorers: Mapping[str, Scorer] | None = None,
        rouge_stemmer: bool = True,
        keep_examples: bool = False,
    ) -> None:
        super().__init__()
        self.task_names: tuple[str, ...] = tuple(task_names)
        _check_task_names(self.task_names)
        scorers = dict(scorers or {})
        unknown = sorted(set(scorers) - set(self.task_names))
        if unknown:
            raise ValueError(f"scorers given for unknown tasks {unknown}; tasks are {list(self.task_names)}")
        self.teacher_forced = nn.ModuleDict({name: TeacherForcedLoss() for name in self.task_names})
        self.generation = nn.ModuleDict(
            {
                name: GenerationMetrics(scorer=scorers.get(name), rouge_stemmer=rouge_stemmer)
                for name in self.task_names
            }
        )
        self.examples = ExampleResults(self.task_names, scorers, rouge_stemmer) if keep_examples else None

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def update_loss(
        self,
        task_ids: Tensor,
        nll_sum_per_example: Tensor,
        tokens_per_example: Tensor,
        example_ids: Sequence[str] | None = None,
    ) -> None:
        """Add a (possibly mixed-task) batch of teacher-forced losses.

        Args:
            task_ids: ``(B,)`` integer task id of each example.
            nll_sum_per_example: ``(B,)`` summed token NLL of each example (nats).
            tokens_per_example: ``(B,)`` number of scored (non-masked) tokens of each example.
            example_ids: the examples' ids, kept per example with ``keep_examples``.

        Sums are grouped by task on the inputs' device and every task's metric is updated
        (with zeros when absent), so the only host synchronisation is the task-id range check.
        """
        task_ids, nll, tokens = (
            torch.as_tensor(t) for t in (task_ids, nll_sum_per_example, tokens_per_example)
        )
        if task_ids.dim() != 1 or nll.shape != task_ids.shape or tokens.shape != task_ids.shape:
            raise ValueError(
                "task_ids, nll_sum_per_example and tokens_per_example must all have shape (B,); got "
                f"{tuple(task_ids.shape)}, {tuple(nll.shape)}, {tuple(tokens.shape)}"
            )
        if task_ids.dtype.is_floating_point or task_ids.dtype == torch.bool:
            raise TypeError(f"task_ids must be an integer tensor, got {task_ids.dtype}")
        if task_ids.numel() == 0:
            return
        self._check_task_ids(task_ids)
        task_ids = task_ids.to(nll.device)
        per_task_nll = torch.zeros(self.num_tasks, dtype=torch.float64, device=nll.device)
        per_task_nll.index_add_(0, task_ids, nll.detach().to(torch.float64))
        per_task_tokens = torch.zeros(self.num_tasks, dtype=torch.float64, device=nll.device)
        per_task_tokens.index_add_(0, task_ids, tokens.detach().to(device=nll.device, dtype=torch.float64))
        for index, name in enumerate(self.task_names):
            self.teacher_forced[name].update(per_task_nll[index], per_task_tokens[index])
        if self.examples is not None and example_ids is not None:
            self.examples.add_losses(task_ids, example_ids, nll, tokens)

    def update_generation(self, task: str, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Add generated answers and their references, all belonging to ``task``."""
        if task not in self.generation:
            raise KeyError(f"unknown task {task!r}; tasks are {list(self.task_names)}")
        self.generation[task].update(predictions, references)

    def update_generation_by_id(
        self,
        task_ids: Tensor | Sequence[int],
        predictions: Sequence[str],
        references: Sequence[str],
        example_ids: Sequence[str] | None = None,
    ) -> None:
        """Add a mixed-task batch of generations, routed to each example's task by id (and kept per example,
        with ``keep_examples`` and ``example_ids``)."""
        ids = [int(i) for i in (task_ids.tolist() if isinstance(task_ids, Tensor) else task_ids)]
        if not (len(ids) == len(predictions) == len(references)):
            raise ValueError(
                f"{len(ids)} task ids, {len(predictions)} predictions, {len(references)} references"
            )
        self._check_task_ids(torch.tensor(ids, dtype=torch.long))
        for index, name in enumerate(self.task_names):
            positions = [k for k, task_id in enumerate(ids) if task_id == index]
            if positions:
                self.update_generation(
                    name, [predictions[k] for k in positions], [references[k] for k in positions]
                )
        if self.examples is not None and example_ids is not None:
            self.examples.add_generations(ids, example_ids, predictions, references)

    def compute(self) -> Results:
        """``{task: {metric: value}}`` for every task with data, plus ``"macro"``.

        A task gets ``"loss"``/``"ppl"`` once it has scored tokens and the generation metrics
        once it has generated examples; a task with neither is left out. ``"macro"`` is the
        unweighted (arithmetic) mean of each metric over the tasks that have it, leaving out tasks
        where it is not applicable (``None``); for ``"ppl"`` that is the mean of the task
        perplexities, not ``exp`` of the macro loss.
        """
        results: Results = {}
        with warnings.catch_warnings():
            # Metrics of a task this rank never saw still take part in the sync; that is intended.
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
            for name in self.task_names:
                loss = {key: float(value) for key, value in self.teacher_forced[name].compute().items()}
                # Presence is decided by the synced token count, so a NaN loss from a diverged
                # model is reported, not hidden.
                task_values = {"loss": loss["loss"], "ppl": loss["ppl"]} if loss["tokens"] > 0 else {}
                task_values.update(self.generation[name].compute())
                if task_values:
                    results[name] = task_values
        results[MACRO] = macro_average(results)
        return results

    def reset(self) -> None:
        """Clear every task's metrics (call at the start or end of each evaluation epoch)."""
        for metric in self.teacher_forced.values():
            metric.reset()
        for bundle in self.generation.values():
            bundle.reset()
        if self.examples is not None:
            self.examples.reset()

    def _check_task_ids(self, task_ids: Tensor) -> None:
        if task_ids.numel() and (int(task_ids.min()) < 0 or int(task_ids.max()) >= self.num_tasks):
            raise IndexError(
                f"task ids must lie in [0, {self.num_tasks}); got range "
                f"[{int(task_ids.min())}, {int(task_ids.max())}]"
            )


def macro_average(per_task: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """Mean of each metric over the tasks reporting it (the ``"macro"`` entry itself is ignored).

    Not-applicable values (``None``) are left out; a metric applicable to no task stays ``None``.
    NaN values (a diverged model) are kept, so they show in the average.
    """
    collected: dict[str, list[float]] = {}
    for task, values in per_task.items():
        if task == MACRO:
            continue
        for metric, value in values.items():
            numbers = collected.setdefault(metric, [])
            if value is not None:
                numbers.append(float(value))
    return {metric: sum(values) / len(values) if values else None for metric, values in collected.items()}


def _check_task_names(task_names: tuple[str, ...]) -> None:
    if not task_names:
        raise ValueError("at least one task name is required")
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"task names must be unique, got {list(task_names)}")
    for name in task_names:
        if not isinstance(name, str) or not name or "." in name or name == MACRO:
            raise ValueError(f"invalid task name {name!r}: need a non-empty str without '.', not {MACRO!r}")
