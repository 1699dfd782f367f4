"""Probes cannot be told from training work, and cannot be cheated (issue 10).

Before, every probe carried run_id "probe" and the candidates [right, "The
answer is W.", W, "The answer is R."]: a client with no data that answered
that pattern scored 100% on every domain, became everyone's top expert and
was never probed again. Here a real reward client (in process, served over
gRPC on loopback) records what the router's probes look like, and a whole
federation of processes faces a cheater (``--fault probe_pattern``).
"""

import re

import pytest

from fedgrpo import serving
from fedgrpo.job.launcher import free_port
from fedgrpo.services.orchestrator.auxiliary import auxiliary_items
from fedgrpo.services.orchestrator.clients import RewardClients
from fedgrpo.services.orchestrator.embedding import MiniLMEmbedder
from fedgrpo.services.orchestrator.routing import ExpertRouter
from fedgrpo.services.reward_client.config import RewardClientSettings
from fedgrpo.services.reward_client.evaluators import AnswerBasedEvaluator
from fedgrpo.services.reward_client.server import RewardClientServicer
from fedgrpo.v1 import orchestrator_pb2 as pb
from fedgrpo.v1 import reward_client_pb2_grpc as rpb_grpc

from .conftest import federation

RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def test_probe_due_on_a_changed_description_and_on_age_only():
    from fedgrpo.services.orchestrator.probes import description_signature, probe_due

    before = description_signature(["add1"], [1], 0.0, 1.0)
    assert probe_due(before, None, None, 5.0, 60.0) == "never probed"
    assert probe_due(before, before, 0.0, 59.0, 60.0) is None
    assert probe_due(before, before, 0.0, 60.0, 60.0) == "its last probe is 60s old"
    assert probe_due(before, before, 0.0, 10**6, 0.0) is None  # 0: never for age
    for changed in (["add1", "sub1"], ["sub1"]):
        now = description_signature(changed, [1], 0.0, 1.0)
        assert probe_due(now, before, 0.0, 1.0, 0.0) == "its description changed"
    assert probe_due(description_signature(["add1"], [1, 2], 0.0, 1.0), before, 0.0, 1.0, 0.0) is not None
    assert probe_due(description_signature(["add1"], [1], 0.0, 10.0), before, 0.0, 1.0, 0.0) is not None


def test_probe_candidates_are_judged_by_a_real_client_as_their_truth_says():
    import random

    from fedgrpo.services.orchestrator.probes import probe_candidates

    items = auxiliary_items(["add1", "sub2", "leg_counting"], 30, 0, 200)
    judge = AnswerBasedEvaluator.from_bank(["add1", "sub2", "leg_counting"], 0, 200)
    rng = random.Random(1)
    for item in items:
        candidates, truth = probe_candidates(item, rng, 6)
        assert len(candidates) == len(truth) == 6
        assert [r >= 0.5 for r in judge.score(item.domain, item.text, candidates)] == truth


class Recording(RewardClientServicer):
    """A real reward client that keeps every Score request it answered."""

    def __init__(self, settings, evaluators):
        super().__init__(settings, evaluators)
        self.requests = []

    def Score(self, request, context):
        self.requests.append(request)
        return super().Score(request, context)


def honest(domains):
    settings = RewardClientSettings(name="honest", domains=domains, bank_size=200, plaintext=True, port=free_port())
    return settings, [AnswerBasedEvaluator.from_bank(domains, settings.bank_seed, settings.bank_size)]


def right_answers(request, judge) -> tuple[bool, ...]:
    return tuple(r >= 0.5 for r in judge.score(request.domain, request.question, list(request.candidates)))


def test_probe_passes_carry_run_shaped_ids_and_random_candidates_and_a_changed_description_is_probed_again():
    from fedgrpo.services.orchestrator.probes import LiveRun  # new with these probes (the module imports without it)

    settings, evaluators = honest(["add1"])
    servicer = Recording(settings, evaluators)
    server, _ = serving.build_server(
        serving.Endpoint([(rpb_grpc.add_RewardClientServiceServicer_to_server, servicer, "x")], settings.port), settings
    )
    server.start()
    clients = RewardClients([f"127.0.0.1:{settings.port}"])
    try:
        clients.wait_for_all(30)
        client = clients.clients[0]
        items = auxiliary_items(["add1"], 6, settings.bank_seed, settings.bank_size)
        router = ExpertRouter(clients, MiniLMEmbedder("cpu"), items, neighbours=3, reprobe_seconds=3600)
        router.probe_new_clients()
        first = list(servicer.requests)
        router.probe_new_clients()  # nothing changed, nothing is old: no probe
        assert len(servicer.requests) == len(first) == 6
        assert router.due(client) is None
        assert router.due(client, now=router.probed_at["honest"] + 3600) == "its last probe is 3600s old"

        # The client comes back holding sub1 too: what it judged before says nothing now.
        servicer.settings, servicer.evaluators = honest(["add1", "sub1"])
        assert clients.describe(client) and client.domains == ("add1", "sub1")
        assert router.due(client) == "its description changed"
        router.live = LiveRun("20261201-101010-c0ffee", 5)  # a run executes now
        router.probe_new_clients()
        second = servicer.requests[6:]
        assert len(second) == 6
    finally:
        clients.close()
        server.stop(0)

    first_ids = {r.run_id for r in first}
    assert len(first_ids) == 1 and RUN_ID.fullmatch(first_ids.pop())  # shaped like a run id, not "probe"
    assert {r.run_id for r in second} == {"20261201-101010-c0ffee"}  # the live run's id
    assert {len(r.candidates) for r in first} == {8} and {len(r.candidates) for r in second} == {5}
    ids = sorted(i.question_id for i in items)
    assert sorted(r.question_id for r in first) == sorted(r.question_id for r in second) == ids
    judge = evaluators[0]
    patterns = [right_answers(r, judge) for r in first + second]
    assert len(set(patterns)) > 1  # the right answers are not always in the same places
    assert len({sum(p) for p in patterns}) > 1  # nor always as many
    shaped_like_the_old_probe = [
        r for r in first + second if len(r.candidates) == 4 and r.candidates[1] == f"The answer is {r.candidates[2]}."
    ]
    assert shaped_like_the_old_probe == []
    assert router.snapshot()[1]["honest"] == {"add1": 1.0}


@pytest.mark.integration
def test_a_cheater_without_data_that_answers_the_old_probe_pattern_is_not_a_top_expert(tmp_path, model_cache):
    """client-0 holds no data it uses (``--fault probe_pattern``): it answers the old probe pattern
    and garbage to everything else; client-1 judges add1 honestly. Both declare add1 and an
    answer-based evaluator, so at equal probe scores client-0 would win by name: it did before
    (100% on every probe), and took every question of the run."""
    clients = [("add1", ["--fault", "probe_pattern"]), ("add1", [])]
    with federation(tmp_path, model_cache, clients) as (stub, _, _services):
        competences = {
            (c.client, c.domain): c.accuracy
            for c in stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest()).competences
        }
        run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
            tasks=["add1"], steps=1, questions_per_step=2, candidates_per_question=4, experts_per_question=1,
            max_tokens=8, expert_selection=pb.EXPERT_SELECTION_CONFIDENCE_GRAPH,
        )))
        events = list(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=600))
        run = stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert competences[("client-1", "add1")] == 1.0
    assert competences[("client-0", "add1")] < 0.8  # about 0.5: random answers to probes it cannot recognise
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    steps = [e.step for e in events if e.HasField("step")]
    assert [dict(s.rewards_by_client) for s in steps] == [{"client-1": 8}]
