"""Lightning callbacks: routing telemetry in TensorBoard, the per-component model summary, progress output."""

from hycam_pl.callbacks.progress import ProgressBar, ProgressLog
from hycam_pl.callbacks.routing import RoutingTelemetry
from hycam_pl.callbacks.summary import ComponentSummary

__all__ = ["ComponentSummary", "ProgressBar", "ProgressLog", "RoutingTelemetry"]
