"""Text metrics against independent reference implementations written here, and hand-worked values."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest
import torch

from hycam_pl.metrics import (
    CorpusBLEU4,
    ExactMatch,
    RougeF1,
    TaskScore,
    exact_match,
    normalize_for_exact_match,
)

# --- independent references -------------------------------------------------------------------


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def reference_corpus_bleu4(predictions: list[str], references: list[str]) -> float:
    """Papineni corpus BLEU-4: clipped counts and lengths summed over the corpus, uniform weights."""
    matches, totals = [0] * 4, [0] * 4
    pred_len = ref_len = 0
    for prediction, reference in zip(predictions, references):
        p, r = prediction.split(), reference.split()
        pred_len, ref_len = pred_len + len(p), ref_len + len(r)
        for n in range(1, 5):
            p_counts, r_counts = _ngrams(p, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, r_counts[g]) for g, c in p_counts.items())
            totals[n - 1] += sum(p_counts.values())
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity_penalty = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity_penalty * math.exp(log_precision)


def _rouge_tokens(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _f1(hits: int, pred_total: int, ref_total: int) -> float:
    if hits == 0 or pred_total == 0 or ref_total == 0:
        return 0.0
    precision, recall = hits / pred_total, hits / ref_total
    return 2 * precision * recall / (precision + recall)


def reference_rouge_n(prediction: str, reference: str, n: int) -> float:
    p, r = _ngrams(_rouge_tokens(prediction), n), _ngrams(_rouge_tokens(reference), n)
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))


def _lcs_length(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def reference_rouge_l(prediction: str, reference: str) -> float:
    p, r = _rouge_tokens(prediction), _rouge_tokens(reference)
    return _f1(_lcs_length(p, r), len(p), len(r))


PREDICTIONS = [
    "the cat sat on the mat",
    "There is a small dog in the garden today",
    "42",
    "def add(a, b): return a + b",
    "Paris is the capital of France .",
]
REFERENCES = [
    "the cat sat on a mat",
    "a small dog is in the garden",
    "The answer is 42 .",
    "def add(a, b):\n    return a + b",
    "The capital of France is Paris .",
]


# --- BLEU -------------------------------------------------------------------------------------


def test_bleu_hand_worked_single_pair():
    # p1..p4 = 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty: BLEU = (1/12) ** (1/4).
    metric = CorpusBLEU4()
    metric.update(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert float(metric.compute()) == pytest.approx((1 / 12) ** 0.25, rel=1e-6)


def test_bleu_is_corpus_level_and_matches_reference():
    metric = CorpusBLEU4()
    metric.update(PREDICTIONS, REFERENCES)
    expected = reference_corpus_bleu4(PREDICTIONS, REFERENCES)
    assert 0.0 < expected < 1.0
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)
    sentence_mean = sum(reference_corpus_bleu4([p], [r]) for p, r in zip(PREDICTIONS, REFERENCES)) / len(
        REFERENCES
    )
    assert float(metric.compute()) != pytest.approx(sentence_mean, rel=1e-3)


def test_bleu_brevity_penalty_applies_to_short_corpus():
    predictions, references = ["the cat sat on the"], ["the cat sat on the mat today"]
    metric = CorpusBLEU4()
    metric.update(predictions, references)
    # Every n-gram of the prediction matches, so BLEU is the brevity penalty alone: exp(1 - 7/5).
    assert float(metric.compute()) == pytest.approx(math.exp(1 - 7 / 5), rel=1e-6)
    assert float(metric.compute()) == pytest.approx(reference_corpus_bleu4(predictions, references), rel=1e-6)


def test_bleu_does_not_depend_on_batching():
    whole, split = CorpusBLEU4(), CorpusBLEU4()
    whole.update(PREDICTIONS, REFERENCES)
    split.update(PREDICTIONS[:1], REFERENCES[:1])
    split.update(PREDICTIONS[1:4], REFERENCES[1:4])
    split.update(PREDICTIONS[4:], REFERENCES[4:])
    assert float(split.compute()) == pytest.approx(float(whole.compute()), rel=1e-9)


def test_bleu_is_unsmoothed_zero_without_any_4gram_match():
    metric = CorpusBLEU4()
    metric.update(["the cat sat"], ["the cat sat"])  # no 4-gram at all
    assert float(metric.compute()) == 0.0


def test_bleu_tokens_are_case_sensitive_whitespace_splits():
    metric = CorpusBLEU4()
    metric.update(["The quick brown fox jumps over the dog"], ["the quick brown fox jumps over the dog"])
    value = float(metric.compute())
    assert 0.0 < value < 1.0  # lowercasing would make this a perfect 1.0
    assert value == pytest.approx(
        reference_corpus_bleu4(
            ["The quick brown fox jumps over the dog"], ["the quick brown fox jumps over the dog"]
        )
    )
    attached = CorpusBLEU4()
    attached.update(["so the answer is 42."], ["so the answer is 42"])
    assert float(attached.compute()) < 1.0  # "42." is not the token "42"


def test_bleu_rejects_a_bare_reference_string():
    metric = CorpusBLEU4()
    with pytest.raises(TypeError):
        metric.update(["the cat sat on the mat"], "the cat sat on a mat")
    with pytest.raises(ValueError):
        metric.update(["a", "b"], ["a"])


# --- ROUGE ------------------------------------------------------------------------------------


def test_rouge_hand_worked_single_pair():
    metric = RougeF1()
    metric.update(["the cat sat on the mat"], ["the cat sat on a mat"])
    values = {k: float(v) for k, v in metric.compute().items()}
    assert values == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6}, rel=1e-6)


def test_rouge_is_mean_of_per_example_f1_and_matches_reference():
    metric = RougeF1()
    metric.update(PREDICTIONS[:2], REFERENCES[:2])
    metric.update(PREDICTIONS[2:], REFERENCES[2:])
    values = {k: float(v) for k, v in metric.compute().items()}
    count = len(PREDICTIONS)
    expected = {
        "rouge1": sum(reference_rouge_n(p, r, 1) for p, r in zip(PREDICTIONS, REFERENCES)) / count,
        "rouge2": sum(reference_rouge_n(p, r, 2) for p, r in zip(PREDICTIONS, REFERENCES)) / count,
        "rougeL": sum(reference_rouge_l(p, r) for p, r in zip(PREDICTIONS, REFERENCES)) / count,
    }
    assert values == pytest.approx(expected, rel=1e-6)
    assert len({round(v, 6) for v in expected.values()}) == 3  # the three keys really differ here


def test_rouge_ignores_case_and_punctuation_and_scores_empty_as_zero():
    metric = RougeF1()
    metric.update(["THE ANSWER: 42!"], ["the answer 42"])
    assert {k: float(v) for k, v in metric.compute().items()} == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    )
    empty = RougeF1()
    empty.update(["", "   "], ["something", "else"])
    assert all(float(v) == 0.0 for v in empty.compute().values())


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_rouge_without_examples_is_nan():
    assert all(math.isnan(float(v)) for v in RougeF1().compute().values())


# --- exact match ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("42", "42", 1.0),
        ("  42 \n", "42", 1.0),  # outer whitespace stripped
        ("a\t\n  b", "a b", 1.0),  # whitespace runs collapsed
        ("", "", 1.0),  # two empty answers agree
        ("   ", "", 1.0),
        ("", "42", 0.0),
        ("ab", "a b", 0.0),  # whitespace inside a token is not removed
        ("Yes", "yes", 0.0),  # case kept
        ("42.", "42", 0.0),  # punctuation kept
    ],
)
def test_exact_match_normalisation(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


def test_normalize_for_exact_match_output():
    assert normalize_for_exact_match("  The\tcat \n\n sat  ") == "The cat sat"


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_exact_match_metric_is_example_mean_across_batches():
    metric = ExactMatch()
    metric.update(["a", "b", "c"], ["a", "x", "c "])
    metric.update(["d"], ["y"])
    assert float(metric.compute()) == pytest.approx(2 / 4)
    assert math.isnan(float(ExactMatch().compute()))


# --- task score -------------------------------------------------------------------------------


def final_number_match(prediction: str, reference: str) -> float:
    numbers = re.findall(r"-?\d+", prediction)
    return float(bool(numbers) and numbers[-1] == re.findall(r"-?\d+", reference)[-1])


def test_task_score_averages_the_scorer_over_batches():
    metric = TaskScore(final_number_match)
    metric.update(["so the answer is 12", "it is 7"], ["#### 12", "#### 8"])
    metric.update(["no idea"], ["#### 3"])
    assert float(metric.compute()) == pytest.approx(1 / 3)


def test_task_score_rejects_non_finite_scores_and_non_callables():
    metric = TaskScore(lambda p, r: float("nan"))
    with pytest.raises(ValueError):
        metric.update(["a"], ["b"])
    with pytest.raises(TypeError):
        TaskScore("not a function")  # type: ignore[arg-type]


def test_metric_states_keep_float64_under_module_dtype_casts():
    # Lightning "bf16-true" converts the whole LightningModule with module.to(dtype=...).
    metric = CorpusBLEU4().to(torch.bfloat16)
    assert metric.numerator.dtype == torch.float64
    metric.update(["w " * 300], ["w " * 300])  # 300 unigram matches: not representable in bf16
    assert float(metric.numerator[0]) == 300.0
