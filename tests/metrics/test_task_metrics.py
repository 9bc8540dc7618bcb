"""TaskMetrics: independent per-task metrics, grouping of mixed batches, macro average (n/a left out), reset."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import hycam_pl.metrics
from hycam_pl.metrics import MACRO, RougeF1, SacreBLEU, TaskMetrics, exact_match, macro_average


def _nll_batch():
    # Task 0 ("qa"): 10 nats over 5 tokens and 2 nats over 3 tokens; task 1 ("code"): 9 nats over 3 tokens.
    return torch.tensor([0, 1, 0]), torch.tensor([10.0, 9.0, 2.0]), torch.tensor([5, 3, 3])


def test_mixed_loss_batch_is_grouped_by_task():
    metrics = TaskMetrics(["qa", "code", "math"])
    metrics.update_loss(*_nll_batch())
    metrics.update_loss(torch.tensor([1]), torch.tensor([3.0]), torch.tensor([3]))
    results = metrics.compute()
    assert results["qa"]["loss"] == pytest.approx(12 / 8)
    assert results["qa"]["ppl"] == pytest.approx(math.exp(12 / 8))
    assert results["code"]["loss"] == pytest.approx(12 / 6)
    assert "math" not in results  # never seen: left out, not reported as 0


def test_generation_of_two_tasks_does_not_leak():
    alone = TaskMetrics(["qa", "code"])
    alone.update_generation("qa", ["the cat sat on the mat"], ["the cat sat on a mat"])
    together = TaskMetrics(["qa", "code"])
    together.update_generation("qa", ["the cat sat on the mat"], ["the cat sat on a mat"])
    together.update_generation("code", ["print ( 1 )", "x"], ["print ( 1 )", "y"])

    qa_alone, qa_together, code = alone.compute()["qa"], together.compute()["qa"], together.compute()["code"]
    assert qa_together == qa_alone  # adding another task changed nothing for "qa"
    assert qa_together["exact_match"] == 0.0 and code["exact_match"] == 0.5
    assert code["rouge1"] == pytest.approx(0.5)  # 1.0 for the identical pair, 0.0 for x/y
    # Each task holds its own metric objects.
    assert together.generation["qa"].sacrebleu is not together.generation["code"].sacrebleu
    assert together.teacher_forced["qa"] is not together.teacher_forced["code"]


def test_generation_values_match_standalone_metrics():
    predictions = ["the cat sat on the mat", "a dog ran in the park today"]
    references = ["the cat sat on a mat", "the dog ran in the park"]
    metrics = TaskMetrics(["qa"], scorers={"qa": exact_match})
    metrics.update_generation("qa", predictions, references)
    bleu, rouge = SacreBLEU(), RougeF1()
    bleu.update(predictions, references)
    rouge.update(predictions, references)
    qa = metrics.compute()["qa"]
    assert qa["sacrebleu"] == pytest.approx(float(bleu.compute()))
    assert {k: qa[k] for k in ("rouge1", "rouge2", "rougeL")} == pytest.approx(
        {k: float(v) for k, v in rouge.compute().items()}
    )
    assert qa["task_score"] == 0.0 and set(qa) == {
        "sacrebleu",
        "rouge1",
        "rouge2",
        "rougeL",
        "exact_match",
        "task_score",
    }


def test_update_generation_by_id_routes_each_example():
    by_id, by_name = TaskMetrics(["a", "b"]), TaskMetrics(["a", "b"])
    predictions, references = ["1", "2", "3", "4"], ["1", "x", "3", "y"]
    by_id.update_generation_by_id(torch.tensor([1, 0, 1, 0]), predictions, references)
    by_name.update_generation("b", ["1", "3"], ["1", "3"])
    by_name.update_generation("a", ["2", "4"], ["x", "y"])
    assert by_id.compute() == by_name.compute()
    assert by_id.compute()["b"]["exact_match"] == 1.0 and by_id.compute()["a"]["exact_match"] == 0.0


def test_reset_clears_between_epochs():
    metrics = TaskMetrics(["qa", "code"])
    metrics.update_loss(*_nll_batch())
    metrics.update_generation("qa", ["x"], ["x"])
    assert metrics.compute()["qa"]["exact_match"] == 1.0
    metrics.reset()
    assert metrics.compute() == {MACRO: {}}
    metrics.update_generation("qa", ["x"], ["y"])
    assert metrics.compute()["qa"]["exact_match"] == 0.0  # the first epoch's match is gone


def test_macro_averages_each_metric_over_tasks_that_have_it():
    metrics = TaskMetrics(["qa", "code", "math"])
    metrics.update_loss(*_nll_batch())  # qa and code get loss; math none
    metrics.update_generation("qa", ["x", "y"], ["x", "z"])  # exact match 0.5
    metrics.update_generation("math", ["1"], ["1"])  # exact match 1.0
    results = metrics.compute()
    macro = results[MACRO]
    assert macro["loss"] == pytest.approx((12 / 8 + 9 / 3) / 2)
    assert macro["ppl"] == pytest.approx((math.exp(12 / 8) + math.exp(9 / 3)) / 2)  # mean of task ppls
    assert macro["exact_match"] == pytest.approx((0.5 + 1.0) / 2)  # "code" has no generations
    assert macro == macro_average(results)  # the macro row itself is not averaged in
    assert list(results) == ["qa", "code", "math", MACRO]


def test_not_applicable_metrics_are_none_and_left_out_of_the_macro_average():
    metrics = TaskMetrics(["qa", "code", "math"], rouge_stemmer=False)
    # qa: a perfect model with one-word answers; BLEU-4 and ROUGE-2 cannot reward it.
    metrics.update_generation("qa", ["Oslo", "Paris"], ["Oslo", "Paris"])
    code_predictions, code_references = ["return a + b", "print ( x )"], ["return a + b", "print ( y )"]
    metrics.update_generation("code", code_predictions, code_references)
    metrics.update_generation("math", ["7"], ["The answer is 7."])
    results = metrics.compute()
    qa, code, math_task, macro = results["qa"], results["code"], results["math"], results[MACRO]
    assert qa["sacrebleu"] is None and qa["rouge2"] is None  # not 0
    assert qa["rouge1"] == qa["rougeL"] == qa["exact_match"] == 1.0
    assert code["sacrebleu"] > 0 and code["rouge2"] > 0 and math_task["sacrebleu"] == 0.0
    assert macro["sacrebleu"] == pytest.approx((code["sacrebleu"] + math_task["sacrebleu"]) / 2)
    assert macro["rouge2"] == pytest.approx((code["rouge2"] + math_task["rouge2"]) / 2)
    assert macro["rouge1"] == pytest.approx((1.0 + code["rouge1"] + math_task["rouge1"]) / 3)
    # The example: a perfect model on short answers no longer drags the macro BLEU down.
    perfect = TaskMetrics(["qa", "code"])
    perfect.update_generation("qa", ["Oslo"], ["Oslo"])
    perfect.update_generation("code", code_references, code_references)
    assert perfect.compute()[MACRO]["sacrebleu"] == pytest.approx(1.0)
    assert perfect.generation["code"].rouge.use_stemmer and not metrics.generation["qa"].rouge.use_stemmer


def test_macro_of_a_metric_applicable_to_no_task_is_none():
    results = {"a": {"sacrebleu": None, "exact_match": 1.0}, "b": {"sacrebleu": None, "loss": float("nan")}}
    macro = macro_average(results)
    assert macro["sacrebleu"] is None and macro["exact_match"] == 1.0
    assert math.isnan(macro["loss"])  # a diverged task still shows in the average


def test_diverged_loss_is_reported_not_hidden():
    metrics = TaskMetrics(["qa"])
    metrics.update_loss(torch.tensor([0]), torch.tensor([float("inf")]), torch.tensor([4]))
    assert math.isinf(metrics.compute()["qa"]["loss"])


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError):
        TaskMetrics(["a", "a"])
    with pytest.raises(ValueError):
        TaskMetrics(["a.b"])
    with pytest.raises(ValueError):
        TaskMetrics([MACRO])
    with pytest.raises(ValueError):
        TaskMetrics(["a"], scorers={"b": exact_match})
    metrics = TaskMetrics(["a", "b"])
    with pytest.raises(IndexError):
        metrics.update_loss(torch.tensor([0, 2]), torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError):
        metrics.update_loss(torch.tensor([0, 1]), torch.ones(3), torch.ones(2))
    with pytest.raises(TypeError):
        metrics.update_loss(torch.tensor([0.0]), torch.ones(1), torch.ones(1))
    with pytest.raises(KeyError):
        metrics.update_generation("c", ["x"], ["x"])


def test_is_a_child_module_without_checkpoint_state():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.task_metrics = TaskMetrics(["qa", "code"])

    holder = Holder().to(torch.bfloat16)
    assert set(holder.state_dict()) == {"linear.weight", "linear.bias"}  # strict loading unaffected
    metric_modules = [m for m in holder.modules() if m.__class__.__module__.startswith("hycam_pl.metrics")]
    assert len(metric_modules) > 6
    holder.task_metrics.update_loss(torch.tensor([0]), torch.tensor([1000.5]), torch.tensor([1]))
    assert holder.task_metrics.compute()["qa"]["loss"] == 1000.5  # float64 state survived the bf16 cast


def test_metrics_package_does_not_import_lightning():
    package_dir = Path(hycam_pl.metrics.__file__).parent
    imported = set()
    for source in package_dir.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert "torchmetrics" in imported
    assert not imported & {"lightning", "pytorch_lightning", "nltk"}
