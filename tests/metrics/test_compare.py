"""The quickstart's side-by-side table of two runs' results.json files."""

from __future__ import annotations

import json

from hycam_pl.metrics.compare import compare_table, main


def test_two_runs_side_by_side_per_task_with_macro_last(tmp_path, capsys):
    base = {"qa": {"loss": 6.9, "task_score": 0.0}, "macro": {"loss": 6.9, "task_score": 0.0}}
    adapted = {"qa": {"loss": 0.25, "task_score": 0.9375}, "code": {"loss": 0.1}, "macro": {"loss": 0.2}}
    paths = []
    for name, results in (("base", base), ("adapted", adapted)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(results))
    output = tmp_path / "comparison.md"
    assert main([f"base={paths[0]}", f"adapted={paths[1]}", "--output", str(output)]) == 0
    table = capsys.readouterr().out.strip()
    assert output.read_text().strip() == table == compare_table({"base": base, "adapted": adapted})
    lines = table.splitlines()
    assert lines[0] == "| task | loss (base) | loss (adapted) | task_score (base) | task_score (adapted) |"
    assert lines[2] == "| qa | 6.9000 | 0.2500 | 0.0000 | 0.9375 |"
    assert lines[3] == "| code | – | 0.1000 | – | – |"
    assert lines[4].startswith("| **macro** | 6.9000 | 0.2000 | 0.0000 | – |")


def test_an_unreadable_results_file_is_one_error_line(tmp_path, capsys):
    assert main([f"base={tmp_path / 'missing.json'}", f"adapted={tmp_path / 'missing.json'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.json" in err[0]
