"""Per-example scorers for generated answers: ``scorer(prediction, reference) -> float`` in [0, 1].

Why a registry: a task names its scorer in YAML (``scorer: final_number``), so scorers must be looked up
by name, and a typo must fail with the list of valid names rather than at the end of a long run.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

from hycam_pl.metrics.exact_match import exact_match

Scorer = Callable[[str, str], float]

_SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str, scorer: Scorer) -> None:
    """Make ``scorer`` available to tasks as ``scorer: <name>``; re-registering a name replaces it."""
    _SCORERS[name] = scorer


def get_scorer(name: str) -> Scorer:
    """Return the scorer registered under ``name``; unknown names raise ``ValueError`` listing the choices."""
    try:
        return _SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer '{name}'; available scorers: {', '.join(scorer_names())}") from None


def scorer_names() -> list[str]:
    """The registered scorer names, sorted."""
    return sorted(_SCORERS)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and English articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalized_exact_match(prediction: str, reference: str) -> float:
    """1.0 when equal after :func:`normalize_answer` (short extractive answers)."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators ignored), or None when there is none."""
    matches = _NUMBER.findall(re.sub(r"(?<=\d),(?=\d{3}\b)", "", text))
    return float(matches[-1]) if matches else None


def final_number_match(prediction: str, reference: str) -> float:
    """1.0 when the last number of the prediction equals the last number of the reference.

    Chain-of-thought answers ("... The answer is 19.") are judged by their result, not their wording.
    """
    expected = final_number(reference)
    return float(expected is not None and final_number(prediction) == expected)


_ANSWER_PHRASE = re.compile(r"answer(?:\s*\([^)]*\))?\s+is\b\s*:?", re.IGNORECASE)


def final_answer(text: str) -> str:
    """The answer a chain of thought ends with, normalised for comparison.

    The text after the last "answer is" / "answer (...) is" (first non-blank line of it), else the last
    non-blank line; then lower-cased, without surrounding parentheses, trailing punctuation or thousands
    separators. Auto-CoT ends its three kinds of answers this way: "the answer (arabic numerals) is
    \n\n1792", "the answer (Yes or No) is: No", "among A through E, the answer is E."
    """
    matches = list(_ANSWER_PHRASE.finditer(text))
    rest = text[matches[-1].end() :] if matches else text
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    if not lines:
        return ""
    answer = lines[0] if matches else lines[-1]
    answer = re.sub(r"(?<=\d),(?=\d{3}\b)", "", answer.lower()).strip().rstrip(".!?;:").strip()
    return answer[1:-1].strip() if answer.startswith("(") and answer.endswith(")") else answer


def final_answer_match(prediction: str, reference: str) -> float:
    """1.0 when the final answers agree (numerically when both are numbers); see :func:`final_answer`."""
    predicted, expected = final_answer(prediction), final_answer(reference)
    if not expected:
        return 0.0
    try:
        return float(float(predicted) == float(expected))
    except ValueError:
        return float(predicted == expected)


# ``exact_match`` is the one exact-match definition of the project (also the ``exact_match`` column of
# every results table): equal after stripping the ends and collapsing inner whitespace runs, case and
# punctuation kept; see hycam_pl.metrics.exact_match. ``whitespace_exact_match`` is kept as another name
# for it so that existing configs keep working.
whitespace_exact_match = exact_match
register_scorer("exact_match", exact_match)
register_scorer("whitespace_exact_match", whitespace_exact_match)
register_scorer("normalized_exact_match", normalized_exact_match)
register_scorer("final_number", final_number_match)
register_scorer("final_answer", final_answer_match)
