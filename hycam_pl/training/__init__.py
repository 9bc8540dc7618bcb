"""The Lightning side of hycam_pl: the multi-task LightningModule and what it needs."""

from hycam_pl.training.evaluation import GenerationSettings
from hycam_pl.training.module import MultiTaskLM

__all__ = ["GenerationSettings", "MultiTaskLM"]
