"""Per-example test results: what a paired comparison of two runs over the same test examples needs.

``hycam test`` writes them as ``examples.jsonl`` next to ``results.json``, one line per evaluated test example:

* ``task``, ``id`` (the stable example id, see :mod:`hycam_pl.data.example_ids`), ``loss_sum`` (summed token
  NLL in nats) and ``num_tokens`` (its scored tokens), so ``sum(loss_sum) / sum(num_tokens)`` over a task's
  lines is that task's ``loss`` in ``results.json`` (every test example has them, unless
  ``trainer.limit_test_batches`` keeps the test loop from some that are still in the generation sample);
* for the examples of the generation sample also ``prediction``, ``reference`` and every per-example score
  under its metric name: ``exact_match``, ``rouge1``, ``rouge2``, ``rougeL`` (rouge_score's F-measure, the
  same scorer as :class:`~hycam_pl.metrics.rouge.RougeF1`) and ``task_score`` for tasks with a scorer. The mean
  of a column over a task's lines is that task's value in ``results.json``. sacreBLEU is a corpus statistic
  (n-gram counts pooled over all examples) and has no per-example value.

Under several processes every rank keeps its own examples and :meth:`ExampleResults.gathered` collects them;
an example met twice (a sampler that pads shards by repeating examples) is kept once. Lines are ordered by
task (task-id order), then by id with its digit runs compared as numbers, the same however the examples were
sharded or batched. :func:`~hycam_pl.metrics.results.write_examples` writes them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from hycam_pl.metrics.exact_match import exact_match
from hycam_pl.metrics.rouge import ROUGE_KEYS, RougeF1
from hycam_pl.metrics.task_score import Scorer


class ExampleResults:
    """The per-example rows of one evaluation, keyed by ``(task, id)``.

    Args:
        task_names: tasks in task-id order.
        scorers: the tasks' own ``scorer(prediction, reference)`` (reported as ``task_score``).
        rouge_stemmer: ROUGE with the Porter stemmer (as :class:`~hycam_pl.metrics.rouge.RougeF1`).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        scorers: Mapping[str, Scorer] | None = None,
        rouge_stemmer: bool = True,
    ) -> None:
        self.task_names = tuple(task_names)
        self.scorers = dict(scorers or {})
        self.rouge = RougeF1(use_stemmer=rouge_stemmer)
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add_losses(
        self, task_ids: Tensor, example_ids: Sequence[str], nll_sum: Tensor, tokens: Tensor
    ) -> None:
        """Each example's summed NLL and scored tokens (``(B,)`` tensors, in ``example_ids``' order)."""
        _check_lengths(example_ids, task_ids, nll_sum, tokens)
        for task_id, example_id, loss, count in zip(
            _as_list(task_ids), example_ids, _as_list(nll_sum), _as_list(tokens), strict=True
        ):
            row = self._row(int(task_id), example_id)
            row.setdefault("loss_sum", float(loss))
            row.setdefault("num_tokens", int(count))

    def add_generations(
        self,
        task_ids: Tensor | Sequence[int],
        example_ids: Sequence[str],
        predictions: Sequence[str],
        references: Sequence[str],
    ) -> None:
        """Each example's generated answer, its reference and their scores."""
        _check_lengths(example_ids, task_ids, predictions, references)
        for task_id, example_id, prediction, reference in zip(
            _as_list(task_ids), example_ids, predictions, references, strict=True
        ):
            row = self._row(int(task_id), example_id)
            if "prediction" in row:
                continue
            row.update(
                prediction=prediction, reference=reference, **self.scores(row["task"], prediction, reference)
            )

    def scores(self, task: str, prediction: str, reference: str) -> dict[str, float]:
        """Every per-example score of one answer, under its metric name."""
        values = {"exact_match": exact_match(prediction, reference)}
        rouge = self.rouge.scorer.score(reference, prediction)  # rouge_score's order: target first
        values.update({key: rouge[key].fmeasure for key in ROUGE_KEYS})
        scorer = self.scorers.get(task)
        if scorer is not None:
            values["task_score"] = float(scorer(prediction, reference))
        return values

    def gathered(self) -> list[dict[str, Any]]:
        """Every process's rows, each example once, in file order (a collective call under ``torch.distributed``:
        every rank must make it)."""
        parts = [self.rows]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self.rows)
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for part in parts:
            for key, row in part.items():
                target = merged.setdefault(key, {})
                for name, value in row.items():
                    target.setdefault(name, value)
        order = {name: index for index, name in enumerate(self.task_names)}
        return [merged[key] for key in sorted(merged, key=lambda k: (order[k[0]], _natural(k[1])))]

    def reset(self) -> None:
        self.rows = {}

    def _row(self, task_id: int, example_id: str) -> dict[str, Any]:
        if not 0 <= task_id < len(self.task_names):
            raise IndexError(f"task id {task_id} is not in [0, {len(self.task_names)})")
        if not isinstance(example_id, str) or not example_id:
            raise ValueError(f"example ids must be non-empty strings, got {example_id!r}")
        task = self.task_names[task_id]
        return self.rows.setdefault((task, example_id), {"task": task, "id": example_id})


def _as_list(values: Tensor | Sequence[Any]) -> list[Any]:
    return values.detach().cpu().tolist() if isinstance(values, Tensor) else list(values)


def _check_lengths(example_ids: Sequence[str], *others: Tensor | Sequence[Any]) -> None:
    lengths = {len(example_ids), *(len(other) for other in others)}
    if len(lengths) != 1:
        raise ValueError(
            f"per-example inputs differ in length: {len(example_ids)} ids, others {sorted(lengths)}"
        )


def _natural(text: str) -> list[Any]:
    """``"qa:10:ab"`` after ``"qa:9:cd"``: digit runs compare as numbers (odd positions of the split)."""
    return [int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", text))]
