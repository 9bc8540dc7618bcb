"""``hycam sweep``: grids of hycam runs (fit then test per trial) scheduled by Ray Tune, and their aggregation.

See the README's "Sweeps" section; :mod:`hycam_pl.sweeps.spec` documents the sweep file.
"""

from hycam_pl.sweeps.aggregate import GroupStats, TrialRecord, aggregate, group_stats
from hycam_pl.sweeps.spec import SweepError, SweepSpec, Trial, load_sweep

__all__ = [
    "GroupStats",
    "SweepError",
    "SweepSpec",
    "Trial",
    "TrialRecord",
    "aggregate",
    "group_stats",
    "load_sweep",
]
