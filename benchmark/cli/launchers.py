"""Launchers run sweep cells: `local` (worker processes on this machine) and `submitit` (SLURM, or
submitit's local executor). They come from a registry, like attacks and defenses; a launcher gets
the training cells and the evaluation cells and must finish every training cell before the
evaluation cells that use its checkpoint start.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from benchmark.core.errors import BenchmarkError
from benchmark.core.options import build_options
from benchmark.core.registry import Registry

CellRunner = Callable[..., int]  # run_cell(folder, writes_markers=True) -> exit code


@dataclass(frozen=True)
class LocalOptions:
    """Worker processes."""
    workers: int = 1


#: submitit's executors: SLURM, and the local one (what the tests drive)
SUBMITIT_CLUSTERS = ("slurm", "local")


@dataclass(frozen=True)
class SubmititOptions:
    """Where and how submitit submits the cells."""
    cluster: str = "slurm"       # slurm, or local (submitit's local executor: what the tests drive)
    partition: str = ""
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    time_limit: int = 240        # minutes
    array_parallelism: int = 16
    folder: str = ""             # submitit's log folder (default: <sweep dir>/submitit)
    processes_per_cell: int = 1  # torch.distributed processes (one per GPU) training and evaluating one cell


class Launcher:
    """Base class: runs `run_cell(folder)` for every cell folder, training cells first."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = LocalOptions

    def __init__(self, sweep_dir: Path, **options: Any) -> None:
        self.sweep_dir = sweep_dir
        self.options = build_options(self.Options, f"launcher '{self.name}'", options)

    def check(self) -> None:
        """Before any cell is written: refuse, in one line, options this machine cannot launch with."""

    def launch(self, train: Sequence[str], evaluate: Sequence[str], run_cell: CellRunner) -> None:
        """Run every training cell, then every evaluation cell."""
        raise NotImplementedError

    @property
    def processes_per_cell(self) -> int:
        """Data-parallel processes of one cell (its checkpoints are trained with that many: part of the key)."""
        return 1


LAUNCHERS: Registry[type[Launcher]] = Registry("launcher", "reid_robustness_bench.launchers")


def register_launcher(name: str, **meta: Any) -> Callable[[type[Launcher]], type[Launcher]]:
    """Class decorator registering a launcher under `name`."""

    def decorator(cls: type[Launcher]) -> type[Launcher]:
        cls.name = name
        meta.setdefault("summary", (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
        return LAUNCHERS.register(name, **meta)(cls)

    return decorator


@register_launcher("local")
class LocalLauncher(Launcher):
    """N worker processes on this machine (spawned, so each cell gets a fresh interpreter)."""

    Options = LocalOptions

    def launch(self, train: Sequence[str], evaluate: Sequence[str], run_cell: CellRunner) -> None:
        if self.options.workers < 1:
            raise BenchmarkError("launcher 'local': workers must be at least 1")
        # A plain `kill` of the sweep would otherwise leave its workers running as orphans, computing cells
        # that the next sweep starts again; leaving the pool's block terminates them instead.
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            with mp.get_context("spawn").Pool(self.options.workers, maxtasksperchild=1) as pool:
                for stage in (train, evaluate):
                    pool.map(run_cell, list(stage), chunksize=1)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@register_launcher("submitit")
class SubmititLauncher(Launcher):
    """SLURM through submitit: job arrays, training cells before evaluation cells (job dependencies)."""

    Options = SubmititOptions

    @property
    def processes_per_cell(self) -> int:
        """The submitit option `processes_per_cell` (one torch.distributed process per GPU)."""
        return int(self.options.processes_per_cell)

    def check(self) -> None:
        """A cluster submitit knows, `srun` on the PATH for SLURM, at least one process per cell."""
        o = self.options
        if o.cluster not in SUBMITIT_CLUSTERS:
            raise BenchmarkError(f"launcher 'submitit': unknown cluster {o.cluster!r}; use "
                                 f"--launcher-opt cluster={' or cluster='.join(SUBMITIT_CLUSTERS)}")
        if o.cluster == "slurm" and shutil.which("srun") is None:
            raise BenchmarkError("launcher 'submitit': no `srun` on the PATH, so this is not a SLURM machine; run "
                                 "the sweep on a login node, or use --launcher local")
        if o.processes_per_cell < 1:
            raise BenchmarkError("launcher 'submitit': processes_per_cell must be at least 1")

    def executor(self) -> Any:
        """A configured submitit AutoExecutor."""
        import submitit

        o = self.options
        folder = Path(o.folder) if o.folder else self.sweep_dir / "submitit"
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=o.cluster)
        params: dict[str, Any] = {"timeout_min": o.time_limit, "cpus_per_task": o.cpus_per_task,
                                  "slurm_array_parallelism": o.array_parallelism, "name": "reid-bench"}
        if o.processes_per_cell > 1:  # one SLURM task per process, each joining the cell's process group
            params["tasks_per_node"] = o.processes_per_cell
        if o.gpus_per_task:
            params["gpus_per_node"] = o.gpus_per_task * o.processes_per_cell
        if o.partition:
            params["slurm_partition"] = o.partition
        executor.update_parameters(**params)
        return executor

    def launch(self, train: Sequence[str], evaluate: Sequence[str], run_cell: CellRunner) -> None:
        """Job arrays: training cells, then evaluation cells (`afterok` on SLURM; waiting on the local executor)."""
        executor = self.executor()
        if self.options.processes_per_cell > 1:
            run_cell = functools.partial(distributed_cell, run_cell)
        jobs = executor.map_array(run_cell, list(train)) if train else []
        if evaluate:
            if jobs and self.options.cluster == "slurm":
                ids = ":".join(job.job_id for job in jobs)
                executor.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{ids}"})
            else:  # the local executor has no dependencies: wait for the checkpoints
                for job in jobs:
                    job.results()
            jobs = list(jobs) + executor.map_array(run_cell, list(evaluate))
        for job in jobs:
            job.results()  # every task's (one per process of a multi-process cell)


def distributed_cell(run_cell: CellRunner, folder: str) -> int:
    """One task of a multi-process cell: torch.distributed's environment from the SLURM job, then the cell.

    Rank 0 writes the cell's markers; every task returns its own exit code.
    """
    import submitit

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return run_cell(folder, writes_markers=env.rank == 0)
