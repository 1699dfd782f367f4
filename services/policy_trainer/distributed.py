"""The trainer across processes and GPUs: FSDP2 (``fully_shard``) under torchrun.

``torchrun --nproc-per-node N -m fedgrpo.cli trainer ...`` starts N ranks (one
per GPU with NCCL, or N CPU processes with gloo). Every rank loads the base
policy and shards it (``shard``: each decoder layer, then the whole model), so
parameters, gradients and AdamW state are split N ways. Rank 0 alone serves
gRPC. Each call that changes the policy (``start``, ``train``) is broadcast by
rank 0 (``Lockstep``) and run by every rank in the same order (``follow``);
what only reads rank 0's bookkeeping (version, lineage, snapshot paths) is
not. An idle trainer broadcasts a heartbeat so the other ranks' wait never
reaches the process group's timeout.

Within a step each rank computes its share of every micro-batch (whole prompt
groups dealt round-robin, ``rank_share``; a rank left without one runs a
zero-weighted placeholder so every rank makes the same collective calls).
The loss keeps its whole-batch normalisation and FSDP sums the ranks'
gradients (divide factor 1), so one step equals the one-process step to
float tolerance (tests/test_distributed_trainer.py). Snapshots and
checkpoints are gathered into full state dicts that rank 0 writes: the
published snapshot is the one-process layout, which the engine reloads as
before.

Stopping: rank 0, told to stop (SIGTERM), sends the others ``stop`` once its
last step is done, and every rank leaves the process group. torchrun starts
each rank in a session of its own, so a rank also dies with torchrun itself
(``PR_SET_PDEATHSIG``): a killed launcher leaves no rank behind holding the
port or the policy.

Limits: float16 needs a sharded loss scaler and is refused (bfloat16 needs
none); a rank that fails alone (out of memory) ends the job through torchrun,
which stops every rank.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .batching import Sample
from .shared_prompt import prompt_groups

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 60.0
GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # a collective no rank finishes in this long fails


@dataclass(frozen=True)
class Ranks:
    """This process's place among the trainer's ranks."""

    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """The device of this rank: its own GPU (``LOCAL_RANK``) with cuda."""
        return f"cuda:{self.local_rank}" if device == "cuda" else device


def world_size() -> int:
    """How many ranks torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: str) -> Ranks | None:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1), or None for a single process."""
    world = world_size()
    if world <= 1:
        return None
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    die_with_parent()
    if device == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
    log.info("rank %d of %d (%s)", ranks.rank, world, dist.get_backend())
    return ranks


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent (torchrun's agent) dies (Linux; elsewhere a no-op)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)


def leave() -> None:
    """Leave the process group (best effort: the other ranks may be gone)."""
    try:
        dist.destroy_process_group()
    except Exception as err:  # noqa: BLE001
        log.debug("leaving the process group: %s", err)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks, found by the class names transformers marks as not to be split."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model`` in place across the process group: each decoder layer, then the rest (embeddings,
    head, final norm) as the root. Gradients are summed across ranks, not averaged: each rank's loss is
    already its share of the whole batch's."""
    from torch.distributed.fsdp import fully_shard

    for layer in [*decoder_layers(model), model]:  # each sharded module reduces its own gradients
        sharded = fully_shard(layer)
        sharded.set_gradient_divide_factor(1.0)
        sharded.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no pre-scaled sum
    return model


def rank_share(samples: Sequence[Sample], ranks: Ranks) -> tuple[list[Sample], float]:
    """This rank's prompt groups of a micro-batch (round-robin) and the weight of its loss: 1, or 0 for the
    placeholder (the first group) computed by a rank that has none, so that its collectives still match.

    A micro-batch with a sample that lacks the sampler's log-probabilities is recomputed whole in one
    process; so every rank's share of it drops them, and every rank makes the same forward passes."""
    groups = prompt_groups(samples)
    mine = [samples[i] for group in groups[ranks.rank::ranks.world] for i in group]
    weight = 1.0 if mine else 0.0
    mine = mine or [samples[i] for i in groups[0]]
    if any(s.old_logprobs is None for s in samples):
        mine = [dataclasses.replace(s, old_logprobs=None) for s in mine]
    return mine, weight


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast(value: object) -> object:
    """Rank 0's ``value``, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_model_state(model: torch.nn.Module) -> dict:
    """The whole float32 state dict, gathered on rank 0 (on CPU; empty elsewhere). Every rank must call."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Load rank 0's full state dicts into every rank's shards (the others pass empty dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


class Lockstep:
    """Rank 0's trainer: ``start`` and ``train`` are broadcast to the other ranks, then run here; anything
    else is read from the wrapped ``PolicyTrainer``."""

    COMMANDS = ("start", "train")

    def __init__(self, trainer, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:  # noqa: ANN001
        self._trainer = trainer
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._heartbeat = threading.Thread(target=self._beat, args=(heartbeat_seconds,), name="rank-heartbeat",
                                           daemon=True)
        self._heartbeat.start()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._trainer, name)

    def start(self, *args):  # noqa: ANN002, ANN201
        return self._everywhere("start", args)

    def train(self, *args):  # noqa: ANN002, ANN201
        return self._everywhere("train", args)

    def _everywhere(self, name: str, args: tuple):  # noqa: ANN202
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{name}: the trainer is stopping; its other ranks are gone")
            broadcast((name, args))
            return getattr(self._trainer, name)(*args)

    def _beat(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            with self._lock:
                if not self._closed:
                    broadcast(("heartbeat", ()))

    def close(self) -> None:
        """After the step in progress: tell the other ranks to stop, and stop broadcasting."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                broadcast(("stop", ()))
            except Exception as err:  # noqa: BLE001 (a rank already gone: torchrun is stopping them all)
                log.warning("could not tell the other ranks to stop: %s", err)


def follow(trainer) -> None:  # noqa: ANN001
    """A rank other than 0: run rank 0's commands on ``trainer`` in order, until rank 0 says ``stop``.

    A refusal rank 0 also meets (a stale batch, a checkpoint that cannot resume) is logged and the next
    command awaited; it is rank 0 that answers the caller. Any other error ends this rank, and torchrun
    then stops the job."""
    import signal

    from .trainer import CheckpointError, SamplerLogprobsNeeded, StaleBatch

    # torchrun passes its SIGTERM to every rank at once; this one waits for rank 0's stop instead, which comes
    # after the step in progress (torchrun still kills it if rank 0 never says so).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        name, args = broadcast(None)
        if name == "heartbeat":
            continue
        if name == "stop":
            log.info("rank 0 is stopping: so is this rank")
            return
        if name not in Lockstep.COMMANDS:
            raise RuntimeError(f"rank 0 sent an unknown command {name!r}")
        try:
            getattr(trainer, name)(*args)
        except (StaleBatch, SamplerLogprobsNeeded, CheckpointError) as err:
            log.info("%s refused here as on rank 0: %s", name, err)
