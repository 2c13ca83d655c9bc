"""torch.distributed for one cell: a process per device under torchrun; rank 0 writes.

Training (data parallel, DistributedDataParallel's arithmetic): every rank walks the same PK
batches and takes whole identities of each; before every optimiser step the gradients are
averaged over the ranks (one all-reduce per step), and BatchNorm buffers follow rank 0 (DDP's
`broadcast_buffers`), so every rank holds the same model after every step. The averaging is an
optimiser step hook rather than the `DistributedDataParallel` wrapper because the defenses'
steps do what the wrapper's reducer cannot follow: input-gradient attacks between forwards,
functional meta-updates that assign `.grad` by hand, and a second optimiser (DDID's discriminator).

Evaluation (sharded): each rank attacks a contiguous run of whole attack batches of the queries;
the adversarial images are gathered in query order. Attacks seed each batch by its first query
and every batch is the one a single process would form, so the numbers equal a single process's
(tested); scoring is repeated on every rank from the gathered images, and only rank 0 writes.

Without torchrun (WORLD_SIZE unset or 1) every function here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from benchmark.core.errors import BenchmarkError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the process group (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and boards."""
        return self.rank == 0


def world() -> World:
    """The current process group's rank and size (0 of 1 when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def requested_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise BenchmarkError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with "
                             "torchrun --nproc-per-node N") from None


def init_from_env(device_name: str = "auto") -> str:
    """Join the process group torchrun describes: gloo on the CPU, nccl on CUDA. Returns the device name to use.

    On CUDA each rank takes the GPU of its LOCAL_RANK. A no-op returning `device_name` without torchrun.
    """
    if requested_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return device_name
    if not dist.is_available():
        raise BenchmarkError("this torch build has no torch.distributed; run without torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if torch.cuda.device_count() <= local:
            raise BenchmarkError(f"rank with LOCAL_RANK={local} has no GPU ({torch.cuda.device_count()} visible); "
                                 "start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        return str(device)
    dist.init_process_group("gloo")
    return "cpu"


def shutdown() -> None:
    """Leave the process group (after a barrier, so no rank exits while another still talks to it)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if world().size > 1:
        dist.barrier()


def from_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its (picklable) result to every rank: one decision for all."""
    w = world()
    if w.size == 1:
        return fn()
    box: list[Any] = [None]
    if w.is_main:
        try:
            box = [(True, fn())]
        except Exception as exc:  # handed to every rank, so none is left waiting on the broadcast
            box = [(False, exc)]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    w = world()
    if w.size == 1:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


# -- training ----------------------------------------------------------------------------------------
def identity_shard(batch: torch.Tensor, k: int) -> torch.Tensor:
    """This rank's share of a P x K batch (K consecutive indices per identity): identities dealt round-robin."""
    w = world()
    if w.size == 1:
        return batch
    blocks = batch.view(-1, k)
    if len(blocks) < 2 * w.size:
        raise BenchmarkError(f"a PK batch of {len(blocks)} identities cannot give {w.size} ranks two identities "
                             "each (batch-hard triplets need a negative); use fewer processes or a larger P")
    return blocks[w.rank::w.size].reshape(-1)


def rank_generator(seed: int) -> torch.Generator:
    """A generator for this rank's own randomness (augmentation, attack starts): one stream per rank."""
    return torch.Generator().manual_seed(seed + 1_000_003 * world().rank)


def _average_gradients(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    """Optimiser step pre-hook: replace each gradient by its mean over the ranks (missing ones count as zero)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    used = [p for p, flag in zip(params, present.tolist(), strict=True) if flag]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not used:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in used])
    dist.all_reduce(flat)
    flat /= world().size
    offset = 0
    for p in used:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def broadcast_state(*modules: nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless `buffers_only`) and buffers to every rank."""
    if world().size == 1:
        return
    for module in modules:
        tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
        for t in tensors:
            dist.broadcast(t.data, src=0)


@contextmanager
def data_parallel(*modules: nn.Module) -> Iterator[None]:
    """While open, every optimiser step averages gradients over the ranks; `modules` start from rank 0's state."""
    if world().size == 1:
        yield
        return
    broadcast_state(*modules)
    handle = register_optimizer_step_pre_hook(_average_gradients)
    try:
        yield
    finally:
        handle.remove()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (for logs and history); keys must agree."""
    w = world()
    if w.size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / w.size for k, v in zip(keys, t.tolist(), strict=True)}


# -- evaluation ----------------------------------------------------------------------------------------
def shard_bounds(n: int, batch: int, size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s contiguous share of n items, cut only at multiples of `batch`."""
    batches = -(-n // batch) if n else 0
    per, extra = divmod(batches, size)
    first = rank * per + min(rank, extra)
    count = per + (1 if rank < extra else 0)
    return min(first * batch, n), min((first + count) * batch, n)


def sharded_attack(run: Callable[[torch.Tensor], torch.Tensor], indices: torch.Tensor, batch: int
                   ) -> torch.Tensor:
    """`run(indices)` over every query, each rank taking whole batches of it; the outputs gathered in order."""
    w = world()
    if w.size == 1:
        return run(indices)
    start, stop = shard_bounds(len(indices), batch, w.size, w.rank)
    mine = run(indices[start:stop]).cpu()
    parts = gather_objects(mine)
    return torch.cat(parts)
