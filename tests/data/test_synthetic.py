"""Synthetic tasks: deterministic per seed, short enough for max_length 256 bytes, scored 1.0 on their references."""

from __future__ import annotations

import pytest

from hycam_pl.data import SYNTHETIC_SCORERS, TokenizeSettings, generate_synthetic, get_scorer, tokenize_split
from hycam_pl.data.scorers import final_number
from tests.data.helpers import SYNTHETIC

WRONG_ANSWERS = {
    "arithmetic": lambda reference: f"The answer is {int(final_number(reference)) + 1}.",
    "code": lambda reference: reference.replace("return", "return -"),
    "qa": lambda reference: "nobody knows",
    "list_ops": lambda reference: "[]",
}


@pytest.mark.parametrize("kind", SYNTHETIC)
def test_deterministic_per_seed(kind):
    assert generate_synthetic(kind, 50, seed=1) == generate_synthetic(kind, 50, seed=1)
    assert generate_synthetic(kind, 50, seed=1) != generate_synthetic(kind, 50, seed=2)
    assert generate_synthetic(kind, 10, seed=1) == generate_synthetic(kind, 50, seed=1)[:10]


@pytest.mark.parametrize("kind", SYNTHETIC)
def test_scorer_gives_reference_one_and_wrong_answer_zero(kind):
    scorer = get_scorer(SYNTHETIC_SCORERS[kind])
    for record in generate_synthetic(kind, 200, seed=3):
        reference = record["output"]
        assert scorer(reference, reference) == 1.0
        assert scorer(WRONG_ANSWERS[kind](reference), reference) == 0.0


@pytest.mark.parametrize("kind", SYNTHETIC)
def test_fits_max_length_256_with_the_byte_tokenizer(data_byte_tokenizer, kind):
    split = tokenize_split(
        generate_synthetic(kind, 1000, seed=0), data_byte_tokenizer, TokenizeSettings(max_length=256)
    )
    assert split.truncated == 0 and split.dropped == 0
    assert max(len(ids) for ids in split.dataset["input_ids"]) <= 256


def test_unknown_synthetic_kind():
    with pytest.raises(
        ValueError, match="unknown synthetic task 'poetry'; available: arithmetic, code, qa, list_ops"
    ):
        generate_synthetic("poetry", 3, 0)
