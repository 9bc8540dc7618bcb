"""Bad data through the real ``hycam fit``: the error names the file, the record and the field; the run stops
with a non-zero exit code and leaves no checkpoint (and, with preflight wiring, no run directory at all)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.helpers import (
    SYNTHETIC_TASK,
    CliResult,
    error_lines,
    files_under,
    good_records,
    run_config,
    run_hycam,
    run_many,
    write_config,
    write_jsonl,
)

pytestmark = pytest.mark.slow

GOOD = good_records(6)
LONG_INSTRUCTION = "Explain " + "very " * 80 + "carefully."  # the prompt alone exceeds max_length=256


@dataclass(frozen=True)
class Case:
    content: list[Any] | bytes | str
    fragments: tuple[str, ...]  # must all appear in the one error line (regexes)
    task: dict[str, Any] | None = None  # extra TaskConfig fields
    names_file: bool = True  # False: raised from the config (before reading) or after tokenising (per task)


CASES: dict[str, Case] = {
    "invalid_json": Case(
        '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{"instruction": "e", "output": \n',
        (r"line 3", r"invalid JSON"),
    ),
    "missing_output": Case(
        [GOOD[0], {"instruction": "no answer", "input": ""}, GOOD[1]],
        (r"record 1 \(line 2\)", r"field 'output' is missing"),
    ),
    "missing_instruction": Case(
        [GOOD[0], GOOD[1], {"output": "orphan"}],
        (r"record 2 \(line 3\)", r"field 'instruction' is missing"),
    ),
    "non_string_output": Case(
        [GOOD[0], {"instruction": "two", "output": 2}],
        (r"record 1 \(line 2\)", r"field 'output' must be a string, got int"),
    ),
    "empty_output": Case(
        [{"instruction": "blank", "output": "   "}], (r"record 0 \(line 1\)", r"'output' is empty")
    ),
    "undecodable_bytes": Case(
        b'{"instruction": "ok", "output": "fine"}\n{"instruction": "caf\xe9", "output": "x"}\n',
        (r"line 2", r"not valid UTF-8 at byte offset 60"),
    ),
    "empty_task": Case("", (r"contains no records",)),
    "all_too_long": Case(
        [{"instruction": LONG_INSTRUCTION, "output": "ok"}] * 8,
        (r"all \d+ examples are longer than max_length=256",),
        names_file=False,
    ),
    "unmapped_column": Case(
        GOOD,
        (r"column 'prompt' \(mapped to field 'instruction'\) not found",),
        {"fields": {"instruction": "prompt"}},
    ),
    "unknown_field_key": Case(
        GOOD,
        (r"fields key 'question' is not one of: instruction, input, output",),
        {"fields": {"question": "q"}},
        names_file=False,
    ),
}


# These also run through the installed console script in a fresh process; all run in-process via main().
IN_SUBPROCESS = {"invalid_json", "all_too_long"}


def _data_file(root: Path, name: str) -> Path:
    return root / f"{name}.jsonl"


def _job(tmp_factory: pytest.TempPathFactory, name: str, mode: str) -> tuple[list[str], Path]:
    case = CASES[name]
    root = tmp_factory.mktemp(f"{name}-{mode}")
    data_file = write_jsonl(_data_file(root, name), case.content)
    task = {"name": "bad", "source": "jsonl", "path": str(data_file), **(case.task or {})}
    config = write_config(root / "config.yaml", run_config(root, [task], every_n_train_steps=1))
    return ["fit", "-c", str(config)], root


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[CliResult, Path]]:
    roots: dict[tuple[str, str], Path] = {}

    def make_job(name: str, mode: str) -> tuple[list[str], Path]:
        args, root = _job(tmp_path_factory, name, mode)
        roots[(mode, name)] = root
        return args, root

    results = run_many(list(CASES), make_job, IN_SUBPROCESS)
    return {key: (result, roots[key]) for key, result in results.items()}


RUNS = [("in-process", name) for name in CASES] + [("hycam", name) for name in sorted(IN_SUBPROCESS)]
RUN_IDS = [f"{mode}-{name}" for mode, name in RUNS]


def _fragments_in_one_line(text: str, fragments: tuple[str, ...]) -> bool:
    return any(all(re.search(f, line) for f in fragments) for line in text.splitlines())


@pytest.mark.parametrize("run", RUNS, ids=RUN_IDS)
def test_bad_data_stops_the_run_with_a_precise_message(outcomes, run: tuple[str, str]) -> None:
    (result, root), case = outcomes[run], CASES[run[1]]
    stderr = result.stderr
    assert result.returncode != 0, stderr[-2000:]
    assert _fragments_in_one_line(stderr, ("task 'bad'", *case.fragments)), stderr[-2000:]
    if case.names_file:
        where = re.escape(str(_data_file(root, run[1])))
        assert _fragments_in_one_line(stderr, (where, *case.fragments)), stderr[-2000:]
    assert not list(root.rglob("*.ckpt")), "a checkpoint was written for a run with bad data"
    assert not (root / "checkpoints").exists()


@pytest.mark.parametrize("run", RUNS, ids=RUN_IDS)
def test_bad_data_is_one_error_line_and_leaves_no_run_directory(outcomes, run: tuple[str, str]) -> None:
    (result, root), case = outcomes[run], CASES[run[1]]
    stderr = result.stderr
    assert result.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-2000:]
    assert all(re.search(f, lines[0]) for f in ("task 'bad'", *case.fragments)), lines[0]
    assert files_under(root / "runs") == [], "partial run directory left behind"


def test_skip_counts_bad_records_per_task_and_trains(tmp_path: Path) -> None:
    """``on_bad_record: skip``: the run trains on the good records and reports how many were skipped, per task."""
    rows: list[Any] = [*good_records(10), {"instruction": "x"}, {"instruction": "y", "output": 3}]
    data_file = write_jsonl(tmp_path / "mixed.jsonl", rows)
    data_file.write_bytes(data_file.read_bytes() + b"{not json\n")
    tasks = [
        {"name": "mixed", "source": "jsonl", "path": str(data_file), "on_bad_record": "skip"},
        dict(SYNTHETIC_TASK),
    ]
    config = write_config(tmp_path / "config.yaml", run_config(tmp_path, tasks, max_steps=1))
    result = run_hycam(["fit", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert re.search(r"task 'mixed': skipped 3 bad record\(s\)", output), output[-3000:]
    table = {
        line.split()[0]: line.split()
        for line in output.splitlines()
        if line.split()[:1] in (["mixed"], ["arith"])
    }
    assert table["mixed"][1:3] == ["10", "3"], table  # records, skipped
    assert table["arith"][1:3] == ["40", "0"], table
    assert list((tmp_path / "runs").rglob("adapter_model.safetensors")), "training did not finish"
