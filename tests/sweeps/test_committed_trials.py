"""Committed experiment records name no path of the machine they ran on (issue 22, section 3)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ABSOLUTE = re.compile(r"""(^|[\s"'=:])/(work|root|home|tmp|Users|mnt|opt|srv|var)/""", re.MULTILINE)


def test_committed_trial_files_hold_no_absolute_path():
    records = [
        path
        for pattern in (
            "trials/*/trial.json",
            "trials/*/config.yaml",
            "trials/*/result.json",
            "trials/*/failed.json",
        )
        for path in (REPO / "experiments").glob(f"**/results/{pattern}")
    ]
    # the first designs (15 + 27 trials) and the 15 learning-rate trials, trial.json and config.yaml each
    assert len(records) >= 2 * (15 + 27 + 15)
    offenders = [str(path.relative_to(REPO)) for path in records if ABSOLUTE.search(path.read_text("utf-8"))]
    assert offenders == []
