"""Small synthetic tasks, generated deterministically from a seed, for tests and smoke runs.

Why: a multi-task run must be checkable without downloads or GPUs. Each example is short (instruction
plus output at most about 105 bytes, so the Alpaca prompt plus response fits ``max_length=256`` with the
byte tokenizer), and each task has a scorer under which its own references score 1.0.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hycam_pl.data.records import Record

SYNTHETIC_SCORERS: dict[str, str] = {
    "arithmetic": "final_number",
    "code": "whitespace_exact_match",
    "qa": "normalized_exact_match",
    "list_ops": "exact_match",
}
SYNTHETIC_KINDS: tuple[str, ...] = tuple(SYNTHETIC_SCORERS)

_NAMES = ("Tom", "Mia", "Ali", "Zoe", "Sam", "Ava", "Leo", "Ivy", "Ben", "Eva", "Max", "Amy")
_ITEMS = ("apples", "pens", "books", "cards", "coins", "eggs", "cups", "hats")


def _record(instruction: str, output: str) -> Record:
    return Record(instruction=instruction, input="", output=output)


def _arithmetic(rng: random.Random) -> Record:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.choice(("add", "sub", "mul", "two_step"))
    if kind == "add":
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?"
        steps = f"{a} + {b} = {a + b}."
        answer = a + b
    elif kind == "sub":
        a = rng.randint(10, 90)
        b = rng.randint(1, a - 1)
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        steps = f"{a} - {b} = {a - b}."
        answer = a - b
    elif kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        question = f"{name} buys {a} boxes with {b} {item} each. How many {item} is that?"
        steps = f"{a} * {b} = {a * b}."
        answer = a * b
    else:
        a, b = rng.randint(5, 40), rng.randint(2, 30)
        c = rng.randint(1, a + b - 1)
        question = f"{name} has {a} {item}, gets {b} more, gives {c} away. How many are left?"
        steps = f"{a} + {b} - {c} = {a + b - c}."
        answer = a + b - c
    return _record(question, f"{steps} The answer is {answer}.")


_BINARY_OPS = (
    (("add", "plus", "total"), "returns {x} plus {y}", "{x} + {y}"),
    (("sub", "minus", "diff"), "returns {x} minus {y}", "{x} - {y}"),
    (("mul", "times", "product"), "returns {x} times {y}", "{x} * {y}"),
    (("larger", "biggest", "top"), "returns the larger of {x} and {y}", "max({x}, {y})"),
    (("smaller", "least", "low"), "returns the smaller of {x} and {y}", "min({x}, {y})"),
    (("mean", "average", "mid"), "returns the mean of {x} and {y}", "({x} + {y}) / 2"),
)
_UNARY_OPS = (
    (("square", "sq"), "returns {x} squared", "{x} * {x}"),
    (("is_even", "even"), "returns True if {x} is even", "{x} % 2 == 0"),
    (("absolute", "size"), "returns the absolute value of {x}", "abs({x})"),
    (("add_{k}", "plus_{k}"), "returns {x} plus {k}", "{x} + {k}"),
    (("times_{k}", "scale_{k}"), "returns {x} times {k}", "{x} * {k}"),
    (("sub_{k}", "minus_{k}"), "returns {x} minus {k}", "{x} - {k}"),
    (("mod_{k}", "rem_{k}"), "returns {x} modulo {k}", "{x} % {k}"),
    (("above_{k}", "over_{k}"), "returns True if {x} is above {k}", "{x} > {k}"),
)
_ARG_PAIRS = (("a", "b"), ("x", "y"), ("m", "n"), ("p", "q"), ("u", "v"))


def _code(rng: random.Random) -> Record:
    x, y = rng.choice(_ARG_PAIRS)
    k = rng.randint(2, 9)
    if rng.random() < 0.4:
        names, spec, body = rng.choice(_BINARY_OPS)
        args = f"{x}, {y}"
    else:
        names, spec, body = rng.choice(_UNARY_OPS)
        args = x
    name = rng.choice(names).format(k=k)
    values = {"x": x, "y": y, "k": k}
    instruction = f"Write a function {name}({args}) that {spec.format(**values)}."
    return _record(instruction, f"def {name}({args}):\n    return {body.format(**values)}")


_FACTS = (
    ("{n} lives in {v}.", "Where does {n} live?", ("Oslo", "Rome", "Lima", "Cairo", "Paris", "Seoul")),
    ("{n} is a {v}.", "What is {n}'s job?", ("baker", "pilot", "nurse", "farmer", "judge", "chef")),
    ("{n} has a pet {v}.", "What pet does {n} have?", ("cat", "dog", "parrot", "rabbit", "goat", "fish")),
    ("{n} likes {v}.", "What color does {n} like?", ("red", "blue", "green", "yellow", "purple", "gray")),
)


def _qa(rng: random.Random) -> Record:
    people = rng.sample(_NAMES, 2)
    facts = [(person, rng.choice(_FACTS)) for person in people]
    sentences, answers = [], []
    for person, (sentence, _, values) in facts:
        value = rng.choice(values)
        sentences.append(sentence.format(n=person, v=value))
        answers.append(value)
    asked = rng.randrange(2)
    question = facts[asked][1][1].format(n=facts[asked][0])
    return _record(f"Read: {' '.join(sentences)} {question}", answers[asked])


def _list_ops(rng: random.Random) -> Record:
    values = [rng.randint(0, 20) for _ in range(rng.randint(3, 6))]
    kind = rng.choice(("sort", "sort_desc", "reverse", "dedupe"))
    if kind == "dedupe" and len(set(values)) == len(values):
        values.insert(rng.randrange(len(values) + 1), rng.choice(values))
    if kind == "sort":
        instruction, result = "Sort the list in ascending order", sorted(values)
    elif kind == "sort_desc":
        instruction, result = "Sort the list in descending order", sorted(values, reverse=True)
    elif kind == "reverse":
        instruction, result = "Reverse the list", values[::-1]
    else:
        instruction, result = "Remove duplicates (keep first ones)", list(dict.fromkeys(values))
    return _record(f"{instruction}: {values}", str(result))


_GENERATORS: dict[str, Callable[[random.Random], Record]] = {
    "arithmetic": _arithmetic,
    "code": _code,
    "qa": _qa,
    "list_ops": _list_ops,
}


def generate_synthetic(kind: str, num_examples: int, seed: int) -> list[Record]:
    """Generate ``num_examples`` records of task ``kind``; the same (kind, seed) always gives the same list."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown synthetic task '{kind}'; available: {', '.join(SYNTHETIC_KINDS)}")
    if num_examples < 1:
        raise ValueError(f"synthetic task '{kind}': num_examples must be >= 1, got {num_examples}")
    rng = random.Random(f"hycam_pl.synthetic:{kind}:{seed}")
    return [_GENERATORS[kind](rng) for _ in range(num_examples)]
