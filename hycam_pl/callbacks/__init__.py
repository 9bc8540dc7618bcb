"""Lightning callbacks: routing telemetry and views in TensorBoard, the run's HParams, the model summary."""

from hycam_pl.callbacks.hparams import HParamsSummary
from hycam_pl.callbacks.routing import RoutingTelemetry
from hycam_pl.callbacks.summary import ComponentSummary

__all__ = ["ComponentSummary", "HParamsSummary", "RoutingTelemetry"]
