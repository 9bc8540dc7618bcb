"""Lightning callbacks: routing telemetry and views in TensorBoard, the run's HParams, the per-component model
summary, progress output, the run record sweeps keep."""

from hycam_pl.callbacks.hparams import HParamsSummary
from hycam_pl.callbacks.progress import ProgressBar, ProgressLog
from hycam_pl.callbacks.record import RunRecord
from hycam_pl.callbacks.routing import RoutingTelemetry
from hycam_pl.callbacks.summary import ComponentSummary

__all__ = [
    "ComponentSummary",
    "HParamsSummary",
    "ProgressBar",
    "ProgressLog",
    "RoutingTelemetry",
    "RunRecord",
]
