"""Scorers: tolerant where the task's answer format allows it, strict elsewhere, looked up by name."""

from __future__ import annotations

import pytest

from hycam_pl.data import get_scorer, scorer_names
from hycam_pl.data.scorers import final_answer, final_number


def test_scorers_tolerate_formatting():
    assert get_scorer("final_number")("so 1,234 is it. The answer is 1,234.", "The answer is 1234.") == 1.0
    assert get_scorer("final_number")("no number here", "The answer is 4.") == 0.0
    assert final_number("Therefore, the answer (arabic numerals) is \n\n1792") == 1792.0
    assert get_scorer("whitespace_exact_match")("def f(a):\n  return  a", "def f(a):\n    return a") == 1.0
    assert get_scorer("normalized_exact_match")("The Oslo.", "oslo") == 1.0
    assert (
        get_scorer("exact_match")(" [1, 2] ", "[1, 2]") == 1.0
        and get_scorer("exact_match")("[1,2]", "[1, 2]") == 0.0
    )


@pytest.mark.parametrize(
    ("reference", "answer"),
    [
        ("Let's think.\nTherefore, the answer (arabic numerals) is \n\n1,792", "1792"),
        ("Therefore, the answer (Yes or No) is: No", "no"),
        ("Therefore, the answer is (E). \nTherefore, among A through E, the answer is E.", "e"),
        ("3 + 4 = 7. The answer is 7.", "7"),
        ("no phrase at all\n\nlast line (B)", "last line (b)"),
    ],
)
def test_final_answer_extraction(reference, answer):
    assert final_answer(reference) == answer


def test_final_answer_scorer():
    scorer = get_scorer("final_answer")
    assert scorer("so the answer is 1792.0", "the answer (arabic numerals) is \n\n1792") == 1.0
    assert scorer("The answer is yes.", "Therefore, the answer (Yes or No) is: No") == 0.0
    assert scorer("anything", "") == 0.0


def test_unknown_scorer_lists_names():
    with pytest.raises(ValueError) as error:
        get_scorer("bleu")
    assert str(error.value) == f"unknown scorer 'bleu'; available scorers: {', '.join(scorer_names())}"
    assert {
        "exact_match",
        "final_answer",
        "final_number",
        "normalized_exact_match",
        "whitespace_exact_match",
    } <= set(scorer_names())
