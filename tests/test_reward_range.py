"""The self-declared reward range attack, against real services.

client-2 runs the ``huge_range`` fault: it declares the reward range [0, 3.4e38] and answers every
reward inverted and scaled to the top of it. client-0 and client-1 judge add1 honestly (same bank:
the same rewards). Taken at face value, client-2's rewards outweigh both honest experts in the
consensus and, without std scaling, give advantages of ~1e38. On the federation's scale [0, 1] its
reward for a candidate the honest clients score r is 1 - r, so the consensus of the three is
(2r + 1 - r) / 3 = (1 + r) / 3 and every advantage is (r - mean r) / 3: the honest experts decide.
"""

import json
import math
import sqlite3
from collections import defaultdict

import pytest

from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import policy_trainer_pb2 as tpb

from .conftest import federation, trainer_stub

pytestmark = pytest.mark.integration

SPEC = dict(
    tasks=["add1"], steps=2, questions_per_step=2, candidates_per_question=6, experts_per_question=3,
    expert_selection=pb.EXPERT_SELECTION_ALL, scale_rewards=False, learning_rate=1e-3, max_tokens=8, temperature=1.0,
    updates_per_batch=1, reward_timeout_seconds=30.0,
)
HONEST = ("client-0", "client-1")


@pytest.fixture(scope="module")
def fed(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("range")
    clients = [("add1", []), ("add1", []), ("add1", ["--fault", "huge_range"])]
    # No confidence graph: every client judges every question (expert_selection "all", weight 1 each),
    # so nothing but the reward scale decides who outweighs whom.
    with federation(tmp, model_cache, clients, orchestrator_args=["--no-confidence-graph"]) as (stub, _, services):
        yield stub, services


def execute(stub, **changes):
    created = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**{**SPEC, **changes})))
    events = list(stub.WatchRun(pb.WatchRunRequest(run_id=created.run_id), timeout=600))
    return [e.step for e in events if e.HasField("step")], stub.GetRun(pb.GetRunRequest(run_id=created.run_id))


def logged(run):
    """Per step: the batch the orchestrator logged for the trainer, and the reward ledger's rows."""
    with sqlite3.connect(f"file:{run.artifacts_path}/../orchestrator.sqlite3?mode=ro", uri=True) as db:
        batches = dict(db.execute("SELECT step, batch FROM steps WHERE run_id = ?", (run.run_id,)).fetchall())
        ledger = db.execute(
            "SELECT step, question_id, client, rewards FROM rewards WHERE run_id = ? ORDER BY rowid", (run.run_id,)
        ).fetchall()
    return batches, ledger


def test_a_client_declaring_a_huge_range_neither_outweighs_honest_experts_nor_blows_up_advantages(fed):
    stub, _ = fed
    steps, run = execute(stub)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert [s.step for s in steps] == [1, 2]
    batches, ledger = logged(run)

    rewards = defaultdict(dict)  # step -> question id -> client -> rewards (ledger order: question by question)
    for step, question_id, client, row in ledger:
        rewards[step].setdefault(question_id, {})[client] = json.loads(row)
    spread = 0
    for s in steps:
        # The attacker's rewards are accepted (they are in its declared range), on the federation's scale.
        assert s.rewards_received == 3 * s.completions and s.rewards_dropped == 0
        questions = rewards[s.step]
        assert len(questions) == SPEC["questions_per_step"]  # distinct questions: the batch maps onto them
        assert batches[s.step] is not None
        sequences = tpb.TrainBatch.FromString(batches[s.step]).sequences
        assert len(sequences) == s.completions
        advantages = [q.advantage for q in sequences]
        # Bounded: rewards in [0, 1] without std scaling give |A| <= 1 (here ~1e38 before the fix).
        assert all(math.isfinite(a) and abs(a) <= 1.0 for a in advantages), advantages
        assert 0.0 <= s.reward_mean <= 1.0, s.reward_mean  # ~8.6e37 before the fix
        for q, by_client in enumerate(questions.values()):
            honest = by_client["client-0"]
            assert by_client["client-1"] == honest
            # The ledger keeps the attacker's rewards on the federation's scale: 1 - r.
            assert by_client["client-2"] == pytest.approx([1.0 - r for r in honest], abs=1e-6)
            mean = sum(honest) / len(honest)
            group = advantages[q * len(honest):(q + 1) * len(honest)]
            # The honest experts decide: A_i = (r_i - mean r) / 3, the sign of the honest call.
            assert group == pytest.approx([(r - mean) / 3 for r in honest], abs=1e-6), (group, honest)
            spread += max(honest) > min(honest)
    assert spread, "no group had honest rewards that differ: the run could not show who decides"


def test_a_runs_max_advantage_clamps_what_goes_to_the_trainer_and_counts_it(fed):
    stub, _ = fed
    steps, run = execute(stub, steps=1, scale_rewards=True, max_advantage=0.5)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert run.spec.max_advantage == 0.5
    batches, _ = logged(run)
    advantages = [q.advantage for q in tpb.TrainBatch.FromString(batches[1]).sequences]
    assert all(abs(a) <= 0.5 for a in advantages), advantages
    at_bound = sum(abs(a) == 0.5 for a in advantages)
    # std-scaled advantages of a group with spread reach beyond 0.5 (here: each clamped one sits at it)
    assert steps[0].advantages_clamped == at_bound > 0


def test_the_trainer_clamps_oversized_advantages_to_its_bound(fed):
    """The same sequences from the same base weights, advantages +-1e30 and +-10 (the trainer's
    default bound): the trainer trains on both alike and says it clamped the first. With rho = 1
    the bnpo loss is -(2 A - 3 A) / 5 tokens = A / 5: 2 for A = 10."""
    _, services = fed
    stub = trainer_stub(services["trainer"].address)
    optimizer = tpb.OptimizerSettings(
        learning_rate=1e-3, loss_type=common_pb2.LOSS_TYPE_BNPO, updates_per_batch=1, max_grad_norm=1.0)
    metrics = {}
    for run_id, advantage in (("clamp-huge", 1e30), ("clamp-ten", 10.0)):
        stub.StartPolicy(tpb.StartPolicyRequest(run_id=run_id, optimizer=optimizer, restart=True))
        sequences = [
            tpb.TrainSequence(prompt_token_ids=[1, 40, 41], completion_token_ids=[50, 51], advantage=advantage),
            tpb.TrainSequence(prompt_token_ids=[1, 40, 43], completion_token_ids=[60, 61, 62], advantage=-advantage),
        ]
        metrics[run_id] = stub.Train(tpb.TrainBatch(
            run_id=run_id, step=1, policy_version=0, sequences=sequences, max_completion_tokens=8,
        )).metrics
    huge, ten = metrics["clamp-huge"], metrics["clamp-ten"]
    assert ten.loss == pytest.approx(2.0, abs=1e-4)
    assert huge.loss == pytest.approx(ten.loss, abs=1e-6) and huge.grad_norm == pytest.approx(ten.grad_norm, rel=1e-5)
    assert (huge.advantages_clamped, ten.advantages_clamped) == (2, 0)
