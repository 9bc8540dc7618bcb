"""Evaluation metrics for multi-task adaptation: plain torch + torchmetrics, no Lightning.

* Text metrics, all offline: corpus sacreBLEU and rouge_score's ROUGE-1/2/L F-measure (same numbers as
  those packages, which papers report), exact match, task scores; ``None`` marks a metric that is not
  applicable to a task.
* Teacher-forced loss and token-weighted perplexity.
* :class:`TaskMetrics`: one independent set of the above per task, as an ``nn.Module``.
* Per-example results (``examples.jsonl``: every test example's loss, answer and scores, by stable id).
* Results files (JSON + Markdown) and routing diagnostics (entropies, task × expert usage, task-expert NMI).
"""

from hycam_pl.metrics.bleu import BLEU_ORDER, SacreBLEU
from hycam_pl.metrics.exact_match import ExactMatch, exact_match, normalize_for_exact_match
from hycam_pl.metrics.generation import GenerationMetrics
from hycam_pl.metrics.per_example import ExampleResults
from hycam_pl.metrics.results import (
    EXAMPLES_JSONL,
    flatten_results,
    format_results_table,
    format_value,
    read_examples,
    write_examples,
    write_results,
)
from hycam_pl.metrics.rouge import ROUGE_KEYS, ROUGE_MIN_TOKENS, RougeF1
from hycam_pl.metrics.routing import (
    expert_load,
    load_entropy,
    router_entropy,
    task_expert_nmi,
    usage_matrix,
)
from hycam_pl.metrics.task_metrics import MACRO, TaskMetrics, macro_average
from hycam_pl.metrics.task_score import Scorer, TaskScore
from hycam_pl.metrics.teacher_forced import TeacherForcedLoss

__all__ = [
    "BLEU_ORDER",
    "EXAMPLES_JSONL",
    "MACRO",
    "ROUGE_KEYS",
    "ROUGE_MIN_TOKENS",
    "ExactMatch",
    "ExampleResults",
    "GenerationMetrics",
    "RougeF1",
    "SacreBLEU",
    "Scorer",
    "TaskMetrics",
    "TaskScore",
    "TeacherForcedLoss",
    "exact_match",
    "expert_load",
    "flatten_results",
    "format_results_table",
    "format_value",
    "load_entropy",
    "macro_average",
    "normalize_for_exact_match",
    "read_examples",
    "router_entropy",
    "task_expert_nmi",
    "usage_matrix",
    "write_examples",
    "write_results",
]
