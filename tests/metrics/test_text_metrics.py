"""Text metrics: sacreBLEU and ROUGE equal the published packages, the not-applicable rule, exact match."""

from __future__ import annotations

import copy
import math
import pickle
import re
from statistics import fmean

import pytest
import sacrebleu
import torch
from rouge_score.rouge_scorer import RougeScorer

from hycam_pl.data import get_scorer
from hycam_pl.metrics import (
    ROUGE_KEYS,
    ExactMatch,
    RougeF1,
    SacreBLEU,
    TaskScore,
    exact_match,
    normalize_for_exact_match,
)
from hycam_pl.metrics.bleu import reference_tokens
from tests.metrics.text_cases import CASES

PREDICTIONS = [prediction for prediction, _ in CASES]
REFERENCES = [reference for _, reference in CASES]
UNEVEN_BATCHES = (slice(0, 1), slice(1, 8), slice(8, 9), slice(9, 30), slice(30, None))


def published_bleu(predictions: list[str], references: list[str]) -> float:
    """sacreBLEU at its defaults (13a, exp smoothing), as a fraction."""
    return sacrebleu.corpus_bleu(predictions, [references]).score / 100


def published_rouge(predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict:
    """rouge_score's per-example F-measure, averaged over examples."""
    scorer = RougeScorer(list(ROUGE_KEYS), use_stemmer=use_stemmer)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
    return {key: fmean(s[key].fmeasure for s in scores) for key in ROUGE_KEYS}


def _fed(metric, predictions=PREDICTIONS, references=REFERENCES, batches=UNEVEN_BATCHES):
    for part in batches:
        metric.update(predictions[part], references[part])
    return metric


def test_the_fixed_set_is_varied_enough():
    assert len(CASES) >= 30
    assert any("\n" in p for p in PREDICTIONS) and any(not p.strip() for p in PREDICTIONS)
    assert any(ord(c) > 127 for text in PREDICTIONS for c in text)
    assert sum(len(r.split()) == 1 for r in REFERENCES) >= 3  # one-word answers


# --- sacreBLEU --------------------------------------------------------------------------------


def test_sacrebleu_equals_the_sacrebleu_package_on_the_fixed_set():
    value = float(_fed(SacreBLEU()).compute())
    expected = published_bleu(PREDICTIONS, REFERENCES)
    assert 0.1 < expected < 0.9
    assert value == pytest.approx(expected, abs=1e-6)
    # Corpus level: not the mean of sentence scores.
    sentence_mean = fmean(published_bleu([p], [r]) for p, r in CASES)
    assert abs(value - sentence_mean) > 1e-3


@pytest.mark.parametrize("batches", [(slice(0, None),), tuple(slice(i, i + 1) for i in range(len(CASES)))])
def test_sacrebleu_does_not_depend_on_batching(batches):
    reference = float(_fed(SacreBLEU()).compute())
    assert float(_fed(SacreBLEU(), batches=batches).compute()) == reference


@pytest.mark.parametrize(
    ("predictions", "references"),
    [
        (["The answer is 42."], ["The answer is 42"]),  # 13a splits the period: 0.67, not 0
        (["the cat sat"], ["the cat sat on the mat"]),  # no 4-gram in the prediction: 0
        (["so the answer is 42", "zzz"], ["The answer is 42.", "yes it is"]),  # exp smoothing of p4
        (["", ""], ["a b c d", "e f g h"]),  # empty predictions: 0
        (["Das ist gut"], ["das ist gut und schön"]),  # case-sensitive, brevity penalty
    ],
)
def test_sacrebleu_equals_the_sacrebleu_package_on_edge_cases(predictions, references):
    metric = SacreBLEU()
    metric.update(predictions, references)
    assert float(metric.compute()) == pytest.approx(published_bleu(predictions, references), abs=1e-6)


def test_sacrebleu_issue_example_scores_like_sacrebleu():
    metric = SacreBLEU()
    metric.update(["The answer is 42."], ["The answer is 42"])
    assert float(metric.compute()) == pytest.approx(0.6687403, abs=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_sacrebleu_is_not_applicable_when_every_reference_is_shorter_than_4_tokens():
    short = SacreBLEU()
    short.update(["Oslo", "42.", "yes it is"], ["Oslo", "42.", "yes it is"])  # perfect, 1-3 tokens
    assert math.isnan(float(short.compute()))
    assert published_bleu(["Oslo", "42.", "yes it is"], ["Oslo", "42.", "yes it is"]) == 0.0  # why
    one_long = SacreBLEU()
    one_long.update(["Oslo", "x"], ["Oslo", "a, b."])  # "a , b ." has 4 tokens under 13a
    assert float(one_long.compute()) == pytest.approx(
        published_bleu(["Oslo", "x"], ["Oslo", "a, b."]), abs=1e-6
    )
    assert math.isnan(float(SacreBLEU().compute()))  # no example


def test_reference_tokens_counts_what_sacrebleu_counts():
    bleu = SacreBLEU().bleu
    for reference in REFERENCES:
        assert reference_tokens(bleu, reference) == sacrebleu.corpus_bleu([reference], [[reference]]).ref_len


def test_sacrebleu_rejects_bad_input_and_survives_pickling():
    metric = SacreBLEU()
    with pytest.raises(TypeError):
        metric.update(["the cat sat on the mat"], "the cat sat on a mat")
    with pytest.raises(ValueError):
        metric.update(["a", "b"], ["a"])
    _fed(metric)
    for clone in (pickle.loads(pickle.dumps(metric)), copy.deepcopy(metric)):  # ddp_spawn, torchmetrics
        assert float(clone.compute()) == float(metric.compute())


# --- ROUGE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_equals_rouge_score_on_the_fixed_set(use_stemmer):
    values = {k: float(v) for k, v in _fed(RougeF1(use_stemmer=use_stemmer)).compute().items()}
    expected = published_rouge(PREDICTIONS, REFERENCES, use_stemmer=use_stemmer)
    assert values == pytest.approx(expected, abs=1e-6)
    assert len({round(v, 6) for v in expected.values()}) == 3  # the three keys really differ here


def test_rouge_stems_by_default_like_papers():
    stemmed, plain = RougeF1(), RougeF1(use_stemmer=False)
    for metric in (stemmed, plain):
        metric.update(["running runs runner ran"], ["run running ran runs"])
    assert float(plain.compute()["rouge2"]) == 0.0
    assert float(stemmed.compute()["rouge2"]) == pytest.approx(1 / 3, abs=1e-9)
    assert stemmed.use_stemmer and not plain.use_stemmer


def test_rouge_hand_worked_single_pair():
    metric = RougeF1()
    metric.update(["the cat sat on the mat"], ["the cat sat on a mat"])
    values = {k: float(v) for k, v in metric.compute().items()}
    assert values == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6}, rel=1e-6)


def test_rouge_ignores_case_and_punctuation_and_scores_empty_as_zero():
    metric = RougeF1()
    metric.update(["THE ANSWER: 42!"], ["the answer 42"])
    assert {k: float(v) for k, v in metric.compute().items()} == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    )
    empty = RougeF1()
    empty.update(["", "   "], ["something else", "else again"])
    assert all(float(v) == 0.0 for v in empty.compute().values())


def test_rouge_not_applicable_rule_per_key():
    one_word = RougeF1()
    one_word.update(["Oslo", "Bergen"], ["Oslo", "oslo."])  # references have 1 token each
    values = {k: float(v) for k, v in one_word.compute().items()}
    assert math.isnan(values["rouge2"])  # a perfect answer would score 0: no reference bigram
    assert values["rouge1"] == values["rougeL"] == pytest.approx(0.5)
    no_tokens = RougeF1()
    no_tokens.update(["東京", ""], ["東京", "..."])  # rouge_score drops non-ASCII letters and punctuation
    assert all(math.isnan(float(v)) for v in no_tokens.compute().values())
    mixed = RougeF1()
    mixed.update(["Oslo", "a b"], ["Oslo", "a b"])  # one reference with a bigram makes ROUGE-2 applicable
    assert float(mixed.compute()["rouge2"]) == pytest.approx(0.5)


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


def test_one_exact_match_definition_for_the_metric_and_the_default_scorer():
    # Before: the scorer only stripped the ends, so "a  b" vs "a b" was 0 there and 1 in the metric.
    for name in ("exact_match", "whitespace_exact_match"):
        assert get_scorer(name) is exact_match
    metric, task_score = ExactMatch(), TaskScore(get_scorer("exact_match"))
    for m in (metric, task_score):
        m.update(PREDICTIONS, REFERENCES)
    assert float(metric.compute()) == float(task_score.compute()) > 0


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


def test_metric_states_keep_their_dtypes_under_module_dtype_casts():
    # Lightning "bf16-true" converts the whole LightningModule with module.to(dtype=...).
    bleu, rouge = SacreBLEU().to(torch.bfloat16), RougeF1().to(torch.bfloat16)
    assert bleu.correct.dtype == torch.long and rouge.fmeasure_sum.dtype == torch.float64
    bleu.update(["w " * 301], ["w " * 301])  # 301 unigram matches: not representable in bf16
    rouge.update(["a b"] * 301, ["a b"] * 301)
    assert int(bleu.correct[0]) == 301 and float(rouge.fmeasure_sum[0]) == 301.0
