"""``compress launch``: the torchrun command lines, or an sbatch script, that run a pipeline on
N nodes with G processes each.

It only writes commands. The processes they start each run ``python -m compress run``: the
training stages train together with DistributedDataParallel (each process on its slice of every
global batch), everything else runs on rank 0 (see ``compress.distributed``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import CompressError

NOTE = (
    "batch_size is per process (global batch = batch_size x processes; see train.lr_scaling); "
    "the run directory must be on storage every node shares."
)


@dataclass(frozen=True)
class Launch:
    """One distributed run of a pipeline: where, how wide, and the ``compress run`` arguments."""

    pipeline: Path
    name: str  # the pipeline's name: rendezvous id and job name
    nodes: int
    gpus_per_node: int
    host: str | None = None  # first node's address, for torchrun's rendezvous without Slurm
    port: int = 29500
    overrides: list[str] = field(default_factory=list)
    run_dir: Path | None = None
    partition: str | None = None
    time: str | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise CompressError("--nodes and --gpus-per-node must be at least 1")
        if not 1 <= self.port <= 65535:
            raise CompressError(f"--port {self.port}: not a TCP port")

    def run_args(self) -> list[str]:
        """``-m compress run PIPELINE ...``: what each process runs."""
        args = ["-m", "compress", "run", str(self.pipeline)]
        for override in self.overrides:
            args += ["--set", override]
        if self.run_dir is not None:
            args += ["--run-dir", str(self.run_dir)]
        return args


def torchrun_command(launch: Launch) -> str:
    """The line to type on every node (one node: a standalone rendezvous on localhost)."""
    if launch.nodes == 1:
        argv = ["torchrun", "--standalone", "--nnodes", "1"]
        argv += ["--nproc-per-node", str(launch.gpus_per_node), *launch.run_args()]
        return shlex.join(argv)
    if not launch.host:
        raise CompressError(
            f"--nodes {launch.nodes} needs --host: the address of the first node, which every "
            "node can reach (or use --slurm, where the job finds it)"
        )
    argv = ["torchrun", "--nnodes", str(launch.nodes)]
    argv += ["--nproc-per-node", str(launch.gpus_per_node)]
    argv += ["--rdzv-id", launch.name, "--rdzv-backend", "c10d"]
    argv += ["--rdzv-endpoint", f"{launch.host}:{launch.port}", *launch.run_args()]
    return shlex.join(argv)


def shell_script(launch: Launch) -> str:
    """The torchrun line as a script, with where to run it."""
    where = (
        "Run it from this folder."
        if launch.nodes == 1
        else f"Run it from this folder on each of the {launch.nodes} nodes, first node first: "
        "the same line everywhere, the c10d rendezvous numbers the nodes."
    )
    return (
        "#!/usr/bin/env bash\n"
        f"# compress launch: {launch.pipeline} on {launch.nodes} x {launch.gpus_per_node} GPUs. "
        f"{where}\n"
        f"# {NOTE}\n"
        "set -euo pipefail\n"
        f"{torchrun_command(launch)}\n"
    )


def sbatch_script(launch: Launch) -> str:
    """A Slurm batch script: one torchrun per node, meeting at the job's first node."""
    directives = [
        f"--job-name={launch.name}",
        f"--nodes={launch.nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={launch.gpus_per_node}",
        "--output=slurm-%x-%j.out",
    ]
    if launch.partition:
        directives.append(f"--partition={launch.partition}")
    if launch.time:
        directives.append(f"--time={launch.time}")
    torchrun = [
        "srun torchrun",
        '--nnodes "$SLURM_NNODES"',
        f"--nproc-per-node {launch.gpus_per_node}",
        '--rdzv-id "$SLURM_JOB_ID"',
        "--rdzv-backend c10d",
        f'--rdzv-endpoint "$head_node:{launch.port}"',
        shlex.join(launch.run_args()),
    ]
    return (
        "#!/usr/bin/env bash\n"
        f"# compress launch: {launch.pipeline} on {launch.nodes} x {launch.gpus_per_node} GPUs. "
        "Submit from this folder with: sbatch THIS_FILE\n"
        f"# {NOTE}\n" + "".join(f"#SBATCH {d}\n" for d in directives) + "set -euo pipefail\n"
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        + " \\\n    ".join(torchrun)
        + "\n"
    )
