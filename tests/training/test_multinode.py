"""Multi-node training launched the way a cluster job is, on this machine: two ``torchrun`` launchers (node ranks
0 and 1, one process each, as on two machines) meet at a c10d rendezvous endpoint on 127.0.0.1 and run
``hycam fit ... --trainer.num_nodes 2`` with the shipped DDP and FSDP2 overlays. The run equals one process on the
same global batch, resumes from its step-2 checkpoint on the same two nodes to the same weights, and
``hycam export`` of its checkpoint reproduces the logits. The SLURM path runs as far as it can without ``srun``:
two processes with the variables ``srun`` sets for 2 nodes x 1 task, which Lightning's ``SLURMEnvironment`` reads.

``method: cam`` (no router): HyCAM's Gumbel routing draws per-rank noise, so only a method without randomness in
its forward can equal one process exactly (HyCAM's multi-rank resume is tested in ``test_scale.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import REPO, assert_export_reproduces_logits, run_cli, tiny_quickstart

pytestmark = pytest.mark.slow

STEPS = 4
GLOBAL_BATCH = 4
TIMEOUT = 300
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(root: Path) -> Path:
    """The tiny config with ``method: cam``, every checkpoint kept (the resume starts from step 2's)."""
    path = tiny_quickstart(root, max_steps=STEPS, val_every=2, num_examples=16, method="cam")
    config = yaml.safe_load(path.read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["save_top_k"] = -1
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def launch(nodes: list[list[str]], root: Path, node_env: list[dict[str, str]] | None = None) -> None:
    """Start one process per node command in ``root`` (a shared filesystem), wait for all; fail with their logs."""
    base = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    running = []
    for rank, command in enumerate(nodes):
        log = (root / f"node{rank}.log").open("w")
        extra = node_env[rank] if node_env else {}
        running.append(
            (subprocess.Popen(command, cwd=root, env={**base, **extra}, stdout=log, stderr=log), log)
        )
    codes = []
    for process, log in running:
        try:
            codes.append(process.wait(TIMEOUT))
        except subprocess.TimeoutExpired:
            for other, _ in running:
                other.kill()
            codes.append("timeout")
        log.close()
    if any(code != 0 for code in codes):
        logs = "\n".join(
            f"--- node {r}:\n{(root / f'node{r}.log').read_text()[-3000:]}" for r in range(len(nodes))
        )
        raise AssertionError(f"exit codes {codes}\n{logs}")


def torchrun_fit(config: Path, overlay: str, root: Path, *options: str) -> None:
    """``torchrun --nnodes 2 --nproc_per_node 1 --node_rank r ... -m hycam_pl.cli fit`` for r = 0, 1."""
    endpoint = f"127.0.0.1:{free_port()}"
    per_rank = GLOBAL_BATCH // 2
    nodes = [
        [
            TORCHRUN,
            *("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank)),
            *("--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint),
            *(
                "-m",
                "hycam_pl.cli",
                "fit",
                "-c",
                str(config),
                "-c",
                str(REPO / "configs" / "trainer" / overlay),
            ),
            *("--trainer.num_nodes", "2", "--trainer.devices", "1", "--data.batch_size", str(per_rank)),
            *options,
        ]
        for rank in range(2)
    ]
    launch(nodes, root)


def trained(root: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return torch.load(root / "checkpoints" / name, weights_only=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The reference: one process, one device, the whole global batch."""
    root = tmp_path_factory.mktemp("single")
    config = node_config(root)
    run_cli("fit", "-c", str(config), "--data.batch_size", str(GLOBAL_BATCH), cwd=root)
    return trained(root)


@pytest.mark.parametrize("overlay", ["ddp.yaml", "fsdp2.yaml"])
def test_two_torchrun_nodes_match_one_process_resume_and_export(tmp_path, single, overlay):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir()
    resumed.mkdir()
    torchrun_fit(node_config(straight), overlay, straight)
    checkpoint = trained(straight)
    assert checkpoint["global_step"] == STEPS
    assert checkpoint["MultiTaskDataModule"]["world_size"] == 2
    reference = single["state_dict"]
    assert checkpoint["state_dict"].keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, rtol=1e-4, atol=1e-6, msg=name)

    # Resume on the same two nodes (a new rendezvous) from the step-2 checkpoint: the same weights at step 4.
    step2 = straight / "checkpoints" / "epoch=0-step=2.ckpt"
    assert step2.is_file(), sorted(p.name for p in (straight / "checkpoints").iterdir())
    halfway = trained(straight, step2.name)["state_dict"]
    assert any(not torch.equal(halfway[n], v) for n, v in checkpoint["state_dict"].items()), "nothing trained"
    torchrun_fit(node_config(resumed), overlay, resumed, "--ckpt_path", str(step2))
    again = trained(resumed)
    assert again["global_step"] == STEPS
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(again["state_dict"][name], value), name

    result = run_cli(
        "export", str(straight / "checkpoints" / "last.ckpt"), str(tmp_path / "adapter"), cwd=tmp_path
    )
    assert "Wrote the adapter" in result.stdout
    assert_export_reproduces_logits(straight / "checkpoints" / "last.ckpt", tmp_path / "adapter")


def slurm_variables(rank: int, port: int) -> dict[str, str]:
    """What ``srun`` sets for task ``rank`` of a 2-node x 1-task job (``#SBATCH --nodes=2 --ntasks-per-node=1``);
    Lightning derives MASTER_ADDR from the node list and MASTER_PORT from the job id (unless they are set)."""
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "hycam",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(rank),
        "MASTER_PORT": str(port),
    }


def test_slurm_variables_as_srun_sets_them_train_two_nodes(tmp_path, single):
    config = node_config(tmp_path)
    per_rank = str(GLOBAL_BATCH // 2)
    command = [sys.executable, "-m", "hycam_pl.cli", "fit", "-c", str(config)]
    command += ["-c", str(REPO / "configs" / "trainer" / "ddp.yaml"), "--trainer.num_nodes", "2"]
    command += ["--trainer.devices", "1", "--data.batch_size", per_rank]
    port = free_port()
    launch([command, command], tmp_path, [slurm_variables(r, port) for r in range(2)])
    node0 = (tmp_path / "node0.log").read_text()
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in node0
    checkpoint = trained(tmp_path)
    assert checkpoint["global_step"] == STEPS and checkpoint["MultiTaskDataModule"]["world_size"] == 2
    for name, value in single["state_dict"].items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, rtol=1e-4, atol=1e-6, msg=name)
