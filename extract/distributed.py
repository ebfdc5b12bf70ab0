"""The ranks of a torchrun job: who this process is, which clips are its own, and the
few messages the ranks exchange.

torchrun (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) starts one process per GPU on every node. Without
those variables the extraction runs as one process and nothing here initialises anything.

Why gloo on every device: the ranks exchange only small Python objects (rank 0's shard
plan, each rank's summary), never tensors, so NCCL would bring nothing but a CUDA context
per peer and a watchdog. Gloo also notices at once when a peer dies (its socket closes),
so the other ranks fail fast instead of waiting for the timeout.

Why shards are whole chunks: every rank writes into the same Zarr store, and a chunk
file is rewritten whole by whoever writes one of its rows. Two ranks writing rows of one
chunk would each rewrite it from their own stale copy and lose the other's clips. Giving
each rank whole chunks makes every chunk file single-writer without any locking.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol, Sequence

from cache_schema import AvarError, InvalidInput

logger = logging.getLogger(__name__)

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class RankFailed(AvarError):
    """One or more ranks of a distributed run stopped; what they finished is kept."""


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not (self.world >= 1 and 0 <= self.rank < self.world and self.local_rank >= 0):
            raise InvalidInput(f"invalid distributed environment: rank {self.rank} of {self.world}, local {self.local_rank}")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def label(self) -> str:
        return f"rank {self.rank}/{self.world}" if self.distributed else "single process"

    @property
    def log_prefix(self) -> str:
        """``"[rank N] "`` under torchrun, so that interleaved log lines say whose they are."""
        return f"[rank {self.rank}] " if self.distributed else ""

    @staticmethod
    def from_environ(environ: Mapping[str, str] = os.environ) -> "DistEnv":
        if "WORLD_SIZE" not in environ:
            return DistEnv()
        try:
            vals = {k: int(environ.get(k, "0")) for k in _ENV_VARS}
        except ValueError:
            raise InvalidInput(f"torchrun variables {', '.join(_ENV_VARS)} must be integers; got "
                             f"{ {k: environ.get(k) for k in _ENV_VARS} }") from None
        return DistEnv(rank=vals["RANK"], world=vals["WORLD_SIZE"], local_rank=vals["LOCAL_RANK"])


def rank_device(device: str, env: DistEnv) -> str:
    """One GPU per local rank: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` in a
    distributed run on a GPU node (an explicit ``cuda:N`` is kept as given)."""
    import torch

    if not env.distributed or device not in ("auto", "cuda") or not torch.cuda.is_available():
        return device
    index = env.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return f"cuda:{index}"


# -- the messages ------------------------------------------------------------------------

class Group(Protocol):
    env: DistEnv

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""


class SingleProcess:
    def __init__(self, env: DistEnv) -> None:
        self.env = env

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]


class GlooGroup:
    """In-memory object collectives over torch.distributed (pickled only between the
    ranks of this job, never read from a file)."""

    def __init__(self, env: DistEnv) -> None:
        self.env = env

    def broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj if self.env.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.env.world if self.env.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


@contextmanager
def process_group(env: DistEnv, timeout_s: float) -> Iterator[Group]:
    """The job's process group for the duration of a run. ``timeout_s`` bounds every
    wait for another rank: at the start for rank 0 to open the cache, at the end for the
    slowest rank to finish its shard. A rank that dies is noticed at once (gloo)."""
    if not env.distributed:
        yield SingleProcess(env)
        return
    import torch.distributed as dist

    if dist.is_initialized():  # a caller's group: use it, leave it to them
        yield GlooGroup(env)
        return
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise InvalidInput(f"{var} is not set: launch distributed extraction with torchrun "
                             "(it sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)")
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world,
                            timeout=_dt.timedelta(seconds=timeout_s))
    logger.info("%s joined the process group (gloo, timeout %.0f s)", env.label(), timeout_s)
    try:
        yield GlooGroup(env)
    finally:
        dist.destroy_process_group()


# -- shards -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """What one rank extracts: rows in cache order, and the chunks those rows lie in
    (the only chunks this rank may write)."""

    rows: tuple[int, ...]
    chunks: frozenset[int]


def plan_shards(rows: Sequence[int], chunk_rows: int, world: int,
                weights: Sequence[float] | None = None) -> list[Shard]:
    """Split ``rows`` (the pending rows) into ``world`` chunk-aligned shards.

    All rows of one chunk go to one rank. Chunks are dealt largest first to the least
    loaded rank (weights: e.g. file sizes, as a proxy for decoding time; default one per
    row), so that ranks finish close together and the final wait stays short. The plan
    depends only on its inputs: a rerun with another ``world`` simply plans the rows that
    are still pending.
    """
    if chunk_rows < 1 or world < 1:
        raise ValueError("chunk_rows and world must be >= 1")
    w = [1.0] * len(rows) if weights is None else [float(x) for x in weights]
    if len(w) != len(rows):
        raise ValueError("one weight per row")
    by_chunk: dict[int, list[int]] = {}
    load_of: dict[int, float] = {}
    for r, wt in zip(rows, w):
        c = int(r) // chunk_rows
        by_chunk.setdefault(c, []).append(int(r))
        load_of[c] = load_of.get(c, 0.0) + max(wt, 0.0) + 1e-9  # every clip costs something
    loads = [0.0] * world
    mine: list[list[int]] = [[] for _ in range(world)]
    for c in sorted(by_chunk, key=lambda c: (-load_of[c], c)):
        rank = min(range(world), key=lambda i: (loads[i], i))
        mine[rank].append(c)
        loads[rank] += load_of[c]
    return [Shard(tuple(sorted(r for c in cs for r in by_chunk[c])), frozenset(cs)) for cs in mine]
