"""The figures the first experiments' READMEs cite come from experiments/first_design_power.py, run here."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_first_design_figures_match_the_readmes():
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "first_design_power.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The smallest detectable macro task_score difference both READMEs quote (0.13-0.22).
    assert "(optimistic): 0.128" in out
    assert "(pessimistic):        0.221" in out
    # The seed-level tests cited next to the loss claims.
    assert "macro loss, HyCAM - LoRA r8: difference -0.0523, Welch t-test over seeds p = 0.0001" in out
    assert "auto_cot loss, HyCAM - CAM: difference -0.0121, Welch t-test over seeds p = 0.013" in out
    readme = (REPO / "experiments" / "method_comparison" / "README.md").read_text(encoding="utf-8")
    assert "does not win" not in readme and "matters most" not in readme
    assert "5.1 times" in readme
