"""Lightning callbacks: routing telemetry in TensorBoard and the per-component model summary."""

from hycam_pl.callbacks.routing import RoutingTelemetry
from hycam_pl.callbacks.summary import ComponentSummary

__all__ = ["ComponentSummary", "RoutingTelemetry"]
