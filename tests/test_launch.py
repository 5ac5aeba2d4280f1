"""compress launch: command lines torchrun itself accepts, and sbatch scripts bash can parse."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from compress.errors import CompressError
from compress.launch import Launch, sbatch_script, shell_script, torchrun_command

QUICKSTART = Path("pipelines/quickstart.yaml")


def torchrun_args(line: str):
    """Parse a printed line with torchrun's own argument parser."""
    argv = shlex.split(line)
    assert argv[0] == "torchrun"
    return get_args_parser().parse_args(argv[1:])


def test_one_node_uses_a_standalone_rendezvous():
    line = torchrun_command(Launch(QUICKSTART, "quickstart", nodes=1, gpus_per_node=4))
    assert line == (
        "torchrun --standalone --nnodes 1 --nproc-per-node 4 "
        "-m compress run pipelines/quickstart.yaml"
    )
    args = torchrun_args(line)
    assert args.standalone and args.nproc_per_node == "4" and args.module
    assert args.training_script == "compress"
    assert args.training_script_args == ["run", "pipelines/quickstart.yaml"]


def test_several_nodes_meet_at_the_first_node_with_c10d():
    launch = Launch(
        QUICKSTART, "quickstart", nodes=2, gpus_per_node=8, host="node0", port=29400,
        overrides=["distill.method={name: kd, temperature: 2}"], run_dir=Path("runs/big"),
    )  # fmt: skip
    line = torchrun_command(launch)
    assert line.startswith(
        "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-id quickstart --rdzv-backend c10d "
        "--rdzv-endpoint node0:29400 -m compress run pipelines/quickstart.yaml"
    )
    args = torchrun_args(line)
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("2", "8", "c10d")
    assert args.rdzv_endpoint == "node0:29400" and not args.standalone
    assert args.training_script_args == [
        "run", "pipelines/quickstart.yaml",
        "--set", "distill.method={name: kd, temperature: 2}", "--run-dir", "runs/big",
    ]  # fmt: skip


def test_several_nodes_without_slurm_need_the_first_nodes_address():
    with pytest.raises(CompressError, match="needs --host"):
        torchrun_command(Launch(QUICKSTART, "quickstart", nodes=3, gpus_per_node=1))


@pytest.mark.parametrize(("nodes", "gpus", "port"), [(0, 1, 29500), (1, 0, 29500), (1, 1, 0)])
def test_impossible_sizes_are_refused(nodes: int, gpus: int, port: int):
    with pytest.raises(CompressError):
        Launch(QUICKSTART, "q", nodes=nodes, gpus_per_node=gpus, port=port)


def test_sbatch_script_runs_one_torchrun_per_node_at_the_jobs_first_node():
    launch = Launch(
        QUICKSTART, "quickstart", nodes=4, gpus_per_node=8, partition="gpu", time="04:00:00",
        overrides=["distill.epochs=3"],
    )  # fmt: skip
    script = sbatch_script(launch)
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=quickstart", "#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8", "#SBATCH --output=slurm-%x-%j.out",
        "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00",
    ]  # fmt: skip
    body = script.split("set -euo pipefail\n", 1)[1]
    assert not any(line.startswith("#SBATCH") for line in body.splitlines())
    command = body.split("\n", 1)[1].replace("\\\n", " ")
    assert command.split()[:2] == ["srun", "torchrun"]
    filled = command.replace("$SLURM_NNODES", "4").replace("$SLURM_JOB_ID", "123")
    args = get_args_parser().parse_args(shlex.split(filled.replace("$head_node", "gpu001"))[2:])
    assert (args.nnodes, args.nproc_per_node, args.rdzv_id) == ("4", "8", "123")
    assert args.rdzv_endpoint == "gpu001:29500" and args.module
    assert args.training_script_args == [
        "run", "pipelines/quickstart.yaml", "--set", "distill.epochs=3",
    ]  # fmt: skip
    assert "batch_size is per process" in script and "reliability issue" not in script


@pytest.mark.parametrize("slurm", [False, True])
def test_scripts_are_valid_bash(tmp_path: Path, slurm: bool):
    launch = Launch(QUICKSTART, "quickstart", nodes=2, gpus_per_node=2, host="10.0.0.1")
    script = tmp_path / "job.sh"
    script.write_text(sbatch_script(launch) if slurm else shell_script(launch))
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_launch_cli_validates_the_pipeline_and_writes_an_executable_script(tmp_path, cli):
    target = tmp_path / "job.sbatch"
    done = cli(
        "launch", "pipelines/quickstart.yaml", "--nodes", "2", "--gpus-per-node", "4",
        "--slurm", "--write", str(target), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"sbatch {target}" in done.stdout
    assert "#SBATCH --nodes=2" in target.read_text() and os.access(target, os.X_OK)

    bad = cli("launch", "pipelines/quickstart.yaml", "--set", "distill.epoch=3", timeout=120)
    assert bad.returncode == 2 and "did you mean 'epochs'" in bad.stdout
