"""The trainer across processes: FSDP2 on 2 gloo ranks under torchrun, against one process, on the tiny model.

Both trainers are real services on loopback, given the same StartPolicy and
the same batches over gRPC: three prompt groups of different sizes in
micro-batches of at most 3 sequences (so one micro-batch holds a single group
and the second rank computes a zero-weighted placeholder for it), a frozen
reference (beta > 0) and two updates per batch. The losses and the published
weights must agree to float tolerance; then the 2-rank trainer is killed and
restarted, resumes its checkpoint and trains the next step like the
one-process trainer.
"""

import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedgrpo.job.launcher import Federation, free_port
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import policy_trainer_pb2 as pb

from .conftest import START_TIMEOUT, trainer_stub

pytestmark = pytest.mark.integration

OPTIMIZER = pb.OptimizerSettings(
    learning_rate=1e-3, loss_type=common_pb2.LOSS_TYPE_BNPO, beta=0.04, epsilon_low=0.2, epsilon_high=0.3,
    updates_per_batch=2, max_grad_norm=1.0,
)


def batch(step: int, version: int) -> pb.TrainBatch:
    groups = [([1, 40, 41, 42], [[50, 51, 52], [53, 54], [55]]), ([1, 43], [[60, 61], [62, 63, 64, 65]]),
              ([1, 44, 45], [[70], [71, 72]])]
    seqs = [pb.TrainSequence(prompt_token_ids=prompt, completion_token_ids=c, advantage=(-1.0) ** (g + i) * (i + 1) / 2)
            for g, (prompt, completions) in enumerate(groups) for i, c in enumerate(completions)]
    return pb.TrainBatch(run_id="r1", step=step, policy_version=version, sequences=seqs, max_completion_tokens=8)


def torchrun(ranks: int) -> list[str]:
    """``torchrun --nproc-per-node <ranks>`` on loopback, running the command that follows as it is."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
            "127.0.0.1", "--master-port", str(free_port()), "--no-python"]


def processes_with(marker: str) -> list[int]:
    """The processes whose command line holds ``marker`` (here: a trainer's state folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return found


def gone(marker: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not processes_with(marker)


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_two_gloo_ranks_train_like_one_process(tmp_path, model_cache):
    args = ["--model", "tiny-policy", "--cache-dir", str(model_cache), "--torch-threads", "1",
            "--micro-batch-sequences", "3", "--checkpoint-every", "1"]
    with Federation(tmp_path / "logs", env={"GLOO_SOCKET_IFNAME": "lo"}) as fed:
        one = fed.start("one-process", "trainer", [*args, "--state-dir", str(tmp_path / "one")])
        two = fed.start("two-ranks", "trainer", [*args, "--state-dir", str(tmp_path / "two")], wrapper=torchrun(2))
        for service in (one, two):
            fed.wait_healthy(service, START_TIMEOUT)
        stubs = {"one": trainer_stub(one.address), "two": trainer_stub(two.address)}
        replies = {}
        for name, stub in stubs.items():
            stub.StartPolicy(pb.StartPolicyRequest(run_id="r1", optimizer=OPTIMIZER))
            replies[name] = stub.Train(batch(1, 0))
        assert "rank 1 of 2" in two.log_path.read_text()  # the second rank is a process of its own
        m1, m2 = replies["one"].metrics, replies["two"].metrics
        assert m2.loss == pytest.approx(m1.loss, rel=1e-4, abs=1e-6)
        assert m2.grad_norm == pytest.approx(m1.grad_norm, rel=1e-4)
        assert m2.kl == pytest.approx(m1.kl, rel=1e-3, abs=1e-7)
        assert m2.sequences == m1.sequences == 7
        base = weights(model_cache / "tiny-policy")
        w1, w2 = weights(tmp_path / "one/runs/r1/policy/v1"), weights(tmp_path / "two/runs/r1/policy/v1")
        assert w1.keys() == w2.keys()
        assert any(not torch.equal(w1[k], base[k]) for k in w1)  # the step changed the weights
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")

        # A crash of the sharded trainer: it resumes from its checkpoint on every rank and trains on alike.
        assert len(processes_with(str(tmp_path / "two"))) == 3  # torchrun and its two ranks
        fed.kill(two)  # SIGKILL to torchrun alone: its ranks live in sessions of their own
        assert gone(str(tmp_path / "two")), "ranks outlived their torchrun"
        fed.restart(two)
        fed.wait_healthy(two, START_TIMEOUT)
        resumed = stubs["two"].StartPolicy(pb.StartPolicyRequest(run_id="r1", optimizer=OPTIMIZER))
        assert (resumed.version, resumed.last_step) == (1, 1)
        second = {name: stub.Train(batch(2, 1)).metrics for name, stub in stubs.items()}
        assert second["two"].loss == pytest.approx(second["one"].loss, rel=1e-4, abs=1e-6)
        w1, w2 = weights(tmp_path / "one/runs/r1/policy/v2"), weights(tmp_path / "two/runs/r1/policy/v2")
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
        fed.stop(two)  # SIGTERM: rank 0 tells rank 1 to stop, and both leave
        assert gone(str(tmp_path / "two")), "ranks outlived a stopped trainer"
        assert "rank 0 is stopping: so is this rank" in two.log_path.read_text()


def test_a_rank_share_recomputes_what_its_micro_batch_recomputes():
    from fedgrpo.services.policy_trainer.batching import Sample
    from fedgrpo.services.policy_trainer.distributed import Ranks, rank_share

    # Rank 1's group has the sampler's log-probabilities, rank 0's does not: one process recomputes the whole
    # micro-batch, so rank 1 must too (else rank 0 runs a forward pass that rank 1 skips, and both hang).
    batch = [Sample([1, 2], [3], None, 1.0), Sample([1, 4], [5], [-0.5], -1.0)]
    share, weight = rank_share(batch, Ranks(rank=1, world=2, local_rank=1))
    assert weight == 1.0 and [s.prompt_ids for s in share] == [[1, 4]] and share[0].old_logprobs is None
    placeholder, weight = rank_share(batch[:1], Ranks(rank=1, world=2, local_rank=1))
    assert weight == 0.0 and placeholder == batch[:1]  # no group of its own: the first, weighted 0
    whole = [Sample([1, 2], [3], [-0.1], 1.0), Sample([1, 4], [5], [-0.5], -1.0)]
    assert rank_share(whole, Ranks(0, 2, 0))[0][0].old_logprobs == [-0.1]  # kept when the micro-batch has all
