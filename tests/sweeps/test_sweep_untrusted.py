"""Sweep files a user did not write carefully (issue 21): not UTF-8, pathologically nested, or a grid value that
makes a trial directory name longer than the file system allows: each is one ``error:`` line, exit 2, already
in the dry run (which used to list the over-long trial that the real run then crashed on)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hycam_pl.sweeps.cli import main as sweep_main


def _sweep(tmp_path: Path, grid_value: object = 1) -> Path:
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump(
            {
                "model": {
                    "method": {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": {"num_experts": 2}}
                }
            }
        )
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": str(tmp_path / "base.yaml"),
                "output": str(tmp_path / "out"),
                "grid": {"data.tasks.0.name": [grid_value]},
                "seeds": [0],
                "metrics": ["macro/loss"],
            }
        )
    )
    return path


def _error(capsys, path: Path) -> str:
    with pytest.raises(SystemExit) as exit_:
        sweep_main(["-c", str(path), "--dry-run"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-2000:]
    assert str(path) in lines[0]
    return lines[0]


def test_a_sweep_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seeds: [0]\nname: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8 text" in _error(capsys, path)


@pytest.mark.parametrize("levels", [100, 50_000])
def test_a_pathologically_nested_sweep_file(tmp_path, capsys, levels):
    path = tmp_path / "deep.yaml"
    path.write_text("seeds: " + "[" * levels + "0" + "]" * levels + "\n")
    assert "nested" in _error(capsys, path)


def test_an_over_long_trial_directory_name_is_refused_in_the_dry_run(tmp_path, capsys):
    path = _sweep(tmp_path, grid_value="x" * 300)
    assert "over the file-system limit of 255" in _error(capsys, path)
