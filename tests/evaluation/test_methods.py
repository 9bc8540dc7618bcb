"""The telemetry callbacks on ``MultiTaskLM`` with every built-in method, ``full`` (no router) included."""

from __future__ import annotations

import pytest

from hycam_pl.callbacks import ComponentSummary, RoutingTelemetry
from hycam_pl.data import MultiTaskDataModule
from hycam_pl.methods import HyCAMMethod
from hycam_pl.training import MultiTaskLM
from tests.evaluation.helpers import read_events, tiny_trainer
from tests.tiny import tiny_byte_llama

BACKBONE = tiny_byte_llama()


@pytest.mark.parametrize(
    "name, method, has_router",
    [
        ("full", "full", False),
        ("cam", "cam", False),
        ("hycam", HyCAMMethod(num_experts=2, rank=4), True),
    ],
)
def test_callbacks_follow_the_method(tmp_path, capsys, name, method, has_router):
    data = MultiTaskDataModule(
        tasks=[
            {"name": t, "source": "synthetic", "path": t, "num_examples": 20} for t in ("arithmetic", "qa")
        ],
        batch_size=2,
        cache_dir=None,
    )
    module = MultiTaskLM(BACKBONE, method=method, learning_rate=1e-3)
    callbacks = [RoutingTelemetry(every_n_steps=1), ComponentSummary()]
    trainer = tiny_trainer(tmp_path, callbacks, max_steps=2, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    tags = read_events(tmp_path / "tiny" / "version_0").Tags()
    router = [tag for tag in tags["scalars"] if tag.startswith("router/")]
    assert bool(router) == has_router
    if has_router:
        assert {"router/task/arithmetic/expert_1", "router/task/qa/expert_0"} <= set(router)
    assert "model/params/total/trainable" in tags["scalars"]
    assert f"hycam_pl model summary ({name})" in capsys.readouterr().out
