"""Print and log trainable/frozen parameters per component when a run starts."""

from __future__ import annotations

import lightning as L


def format_summary(counts: dict[str, dict[str, int]]) -> str:
    """A Markdown table of the method's parameter summary, one row per component it reports."""
    lines = ["| component | trainable | frozen |", "|---|---:|---:|"]
    for name, values in counts.items():
        lines.append(f"| {name} | {values['trainable']:,} | {values['frozen']:,} |")
    return "\n".join(lines)


class ComponentSummary(L.Callback):
    """Trainable and frozen parameter counts per component (shared, experts, router, backbone)."""

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        method = getattr(pl_module, "method", None)
        if method is None or not trainer.is_global_zero:
            return
        counts = method.summary(pl_module.model)
        table = format_summary(counts)
        print(f"\nhycam_pl model summary ({method.name}):\n{table}\n")
        for logger in trainer.loggers:
            logger.log_metrics(
                {
                    f"model/params/{name}/{kind}": float(v)
                    for name, values in counts.items()
                    for kind, v in values.items()
                },
                step=0,
            )
            experiment = logger.experiment
            if hasattr(experiment, "add_text"):
                experiment.add_text("model/summary", table, 0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "test":
            self._report(trainer, pl_module)
