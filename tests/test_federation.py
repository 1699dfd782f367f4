"""The whole federation as processes, driven through the orchestrator's public API.

Runs the tiny model with the transformers engine here (fast to start); the
vLLM engine has its own end-to-end test in test_vllm_federation.py.
"""

import json
import math
from pathlib import Path

import grpc
import pytest
from transformers import AutoModelForCausalLM

from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as pb

from .conftest import PROBES, federation

pytestmark = pytest.mark.integration

SPEC = dict(
    tasks=["add1"], steps=3, questions_per_step=2, candidates_per_question=6, experts_per_question=2,
    learning_rate=1e-3, max_tokens=8, temperature=1.0, updates_per_batch=1, reward_timeout_seconds=5.0,
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("fed")
    with federation(tmp, model_cache, [("add1,sub1", []), ("mul1,add1", [])]) as (stub, launcher, services):
        yield stub, tmp


def wait(stub, run_id):
    events = list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=600))
    return events, stub.GetRun(pb.GetRunRequest(run_id=run_id))


def test_lists_reward_clients(fed):
    stub, _ = fed
    clients = stub.ListRewardClients(pb.ListRewardClientsRequest()).clients
    assert [c.name for c in clients] == ["client-0", "client-1"]
    assert all(c.healthy for c in clients)
    assert list(clients[1].domains) == ["mul1", "add1"]
    assert list(clients[0].evaluator_kinds) == [common_pb2.EVALUATOR_KIND_ANSWER_BASED]


def test_a_short_run_trains_and_leaves_its_artifacts(fed):
    stub, tmp = fed
    run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**SPEC)))
    assert run.state == pb.RUN_STATE_QUEUED and run.spec.loss_type == common_pb2.LOSS_TYPE_BNPO  # defaults echoed
    events, run = wait(stub, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    steps = [e.step for e in events if e.HasField("step")]
    states = [e.run.state for e in events if e.HasField("run")]
    assert [s.step for s in steps] == [1, 2, 3]
    assert states[0] == pb.RUN_STATE_QUEUED and states[-1] == pb.RUN_STATE_SUCCEEDED
    for s in steps:
        assert s.questions == 2 and s.completions == 12
        # two experts x six candidates per question, every reward valid
        assert s.rewards_received == 24 and s.rewards_dropped == 0
        assert 0.0 <= s.reward_mean <= 1.0
    # every trained step moved the policy on by exactly one version
    trained = [s for s in steps if s.train_seconds > 0]
    assert trained, "the tiny policy gave no group a learning signal"
    assert run.policy.version == len(trained)
    # (was `loss != 0 or clip_ratio >= 0`, true whatever the trainer sent)
    assert all(math.isfinite(s.loss) and 0.0 <= s.clip_ratio <= 1.0 for s in trained)

    artifacts = Path(run.artifacts_path)
    rows = [json.loads(line) for line in (artifacts / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"policy_version", "reward_mean", "generate_seconds", "score_seconds", "train_seconds",
            "sync_seconds"} <= rows[0].keys()
    AutoModelForCausalLM.from_pretrained(artifacts / "model")  # the final policy loads

    # Generate serves the policy the run left loaded, stamped with its version.
    reply = stub.Generate(pb.GenerateRequest(prompts=["What is 2 + 2?", "Hi"], max_tokens=4))
    assert reply.policy.version == run.policy.version and reply.policy.run_id == run.run_id
    assert len(reply.results) == 2 and all(len(r.completions) == 1 for r in reply.results)

    listed = stub.ListRuns(pb.ListRunsRequest()).runs
    assert run.run_id in [r.run_id for r in listed]

    # A caller names the policy: the base model, then the run's again (loaded back), each stamped.
    base = stub.Generate(pb.GenerateRequest(prompts=["Hi"], max_tokens=4, policy_version=0))
    assert (base.policy.run_id, base.policy.version) == ("", 0)
    again = stub.Generate(pb.GenerateRequest(prompts=["Hi"], max_tokens=4, run_id=run.run_id))
    assert (again.policy.run_id, again.policy.version) == (run.run_id, run.policy.version)
    assert again.results[0].completions[0].text == reply.results[1].completions[0].text  # greedy, same weights
    for request, code, words in (
        (dict(run_id=run.run_id, policy_version=run.policy.version + 5), grpc.StatusCode.FAILED_PRECONDITION,
         "keeps only its latest policy"),
        (dict(policy_version=3), grpc.StatusCode.INVALID_ARGUMENT, "policy_version: got 3 without run_id"),
        (dict(run_id="19990101-000000-000000"), grpc.StatusCode.NOT_FOUND, "no such run"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(pb.GenerateRequest(prompts=["Hi"], max_tokens=4, **request))
        assert err.value.code() == code and words in err.value.details()


def test_confidence_graph_learns_who_judges_what_and_routes_by_it(fed):
    stub, _ = fed
    view = stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest())
    accuracy = {(c.client, c.domain): c.accuracy for c in view.competences}
    # client-0 holds add1 and sub1, client-1 holds mul1 and add1 (answer-based: exact judges)
    assert accuracy[("client-0", "sub1")] == 1.0 and accuracy[("client-0", "mul1")] == 0.0
    assert accuracy[("client-1", "mul1")] == 1.0 and accuracy[("client-1", "sub1")] == 0.0
    graph = json.loads(view.graph_json)
    assert len(graph["items"]["ids"]) == 100

    spec = pb.RunSpec(**{**SPEC, "tasks": ["sub1", "mul1"], "steps": 2, "questions_per_step": 4,
                         "experts_per_question": 1, "expert_selection": pb.EXPERT_SELECTION_CONFIDENCE_GRAPH})
    run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
    events, run = wait(stub, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    for s in (e.step for e in events if e.HasField("step")):
        assert s.routing_precision == 1.0
        assert s.rewards_dropped == 0  # every question went to a client holding its data
    assert (Path(run.artifacts_path) / "confidence_graph.graphml").exists()
    assert (Path(run.artifacts_path) / "confidence_graph.png").read_bytes()[:4] == b"\x89PNG"


def test_pooled_reading_gives_each_expert_its_own_block(fed):
    stub, _ = fed
    spec = pb.RunSpec(**{**SPEC, "steps": 2, "reward_reading": pb.REWARD_READING_POOLED})
    run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
    assert run.spec.reward_reading == pb.REWARD_READING_POOLED
    events, run = wait(stub, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    for s in (e.step for e in events if e.HasField("step")):
        # M x G candidates per question, each scored by exactly one expert
        assert s.completions == 2 * 2 * 6
        assert s.rewards_received == s.completions and s.rewards_dropped == 0


@pytest.mark.parametrize(
    "change, field",
    [
        # enum numbers this orchestrator does not know (a newer or broken client)
        ({"reward_reading": 9}, "spec.reward_reading"),
        ({"expert_selection": 9}, "spec.expert_selection"),
        ({"tasks": ["astrology"]}, "spec.tasks"),
        ({"tasks": ["leg_counting"]}, "spec.tasks"),  # no client holds it
        ({"candidates_per_question": 1}, "spec.candidates_per_question"),
        ({"experts_per_question": 0}, "spec.experts_per_question"),
        ({"experts_per_question": 3}, "spec.experts_per_question"),
        ({"steps": 0}, "spec.steps"),
        ({"learning_rate": 0.0}, "spec.learning_rate"),
        ({"loss_type": 9}, "spec.loss_type"),
    ],
)
def test_invalid_run_specs_are_refused_and_create_nothing(fed, change, field):
    stub, _ = fed
    before = len(stub.ListRuns(pb.ListRunsRequest()).runs)
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**{**SPEC, **change})))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()
    assert len(stub.ListRuns(pb.ListRunsRequest()).runs) == before


def test_unknown_run_is_not_found(fed):
    stub, _ = fed
    for call, request in [
        (stub.GetRun, pb.GetRunRequest(run_id="nope")),
        (stub.CancelRun, pb.CancelRunRequest(run_id="nope")),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        list(stub.WatchRun(pb.WatchRunRequest(run_id="nope")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"prompts": []}, "prompts"),
        ({"prompts": [""]}, "prompts[0]"),
        ({"prompts": ["hi"], "n": 0}, "n"),
        ({"prompts": ["hi"], "temperature": -1.0}, "temperature"),
        ({"prompts": ["hi"], "top_p": 0.0}, "top_p"),
        ({"prompts": ["hi"], "max_tokens": 0}, "max_tokens"),
        ({"prompts": ["hi"], "system": "x" * 20_000}, "system"),
        ({"prompts": ["hi"], "system": "Be brief.", "raw_prompts": True}, "system"),
    ],
)
def test_bad_generate_requests_name_the_field(fed, request_fields, field):
    stub, _ = fed
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(**request_fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":")


def test_generate_puts_the_system_prompt_through_the_chat_template(fed, model_cache):
    """A system prompt answers exactly as the same conversation written out by the template (greedy)."""
    from transformers import AutoTokenizer

    stub, _ = fed
    tokenizer = AutoTokenizer.from_pretrained(model_cache / "tiny-policy")
    system, question = "You are a careful calculator. Reply with digits only.", "What is 12 + 30?"
    raw = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": question}], tokenize=False,
        add_generation_prompt=True)
    assert system in raw
    with_system = stub.Generate(pb.GenerateRequest(prompts=[question], system=system, max_tokens=12))
    written_out = stub.Generate(pb.GenerateRequest(prompts=[raw], raw_prompts=True, max_tokens=12))
    text = [r.results[0].completions[0] for r in (with_system, written_out)]
    assert (text[0].text, text[0].num_tokens) == (text[1].text, text[1].num_tokens)
    assert len(tokenizer(raw, add_special_tokens=False)["input_ids"]) > len(
        tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True))


def test_cancel_stops_a_run_after_its_current_step(fed):
    stub, _ = fed
    run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**{**SPEC, "steps": 500})))
    for event in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=600):
        if event.HasField("step") and event.step.step >= 2:
            # While it trains, the engine is the run's: another policy is refused, the run's own is served.
            # (From step 2 on: step 2's rollouts may come from the base policy, sampled while step 1 trained.)
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(pb.GenerateRequest(prompts=["Hi"], max_tokens=2, policy_version=0))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is training" in err.value.details()
            own = stub.Generate(pb.GenerateRequest(prompts=["Hi"], max_tokens=2, run_id=run.run_id))
            assert own.policy.run_id == run.run_id
            pending = stub.CancelRun(pb.CancelRunRequest(run_id=run.run_id))
            assert pending.state == pb.RUN_STATE_CANCELLED or pending.cancel_requested
            break
    _, run = wait(stub, run.run_id)
    assert run.state == pb.RUN_STATE_CANCELLED
    assert run.steps_completed < 500


def test_a_retried_create_run_returns_the_first_run_and_creates_no_second(fed):
    stub, _ = fed
    spec = pb.RunSpec(**{**SPEC, "steps": 500})
    before = len(stub.ListRuns(pb.ListRunsRequest()).runs)
    first = stub.CreateRun(pb.CreateRunRequest(spec=spec, request_id="7f1c2a9e-retry"))
    again = stub.CreateRun(pb.CreateRunRequest(spec=spec, request_id="7f1c2a9e-retry"))  # the reply was lost
    assert again.run_id == first.run_id
    for request_id, status in (("7f1c2a9e-retry", grpc.StatusCode.ALREADY_EXISTS),  # same id, another spec
                               ("no spaces allowed", grpc.StatusCode.INVALID_ARGUMENT),
                               ("x" * 129, grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**{**SPEC, "steps": 499}), request_id=request_id))
        assert err.value.code() == status and "request_id" in err.value.details()
    assert len(stub.ListRuns(pb.ListRunsRequest()).runs) == before + 1
    stub.CancelRun(pb.CancelRunRequest(run_id=first.run_id))
    _, run = wait(stub, first.run_id)
    assert run.state == pb.RUN_STATE_CANCELLED

    # Pages of one run each walk every run once, oldest first; a state filter; a bad token names the field.
    walked, token = [], ""
    while True:
        reply = stub.ListRuns(pb.ListRunsRequest(page_size=1, page_token=token))
        assert len(reply.runs) == 1
        walked.append(reply.runs[0].run_id)
        if not (token := reply.next_page_token):
            break
    assert walked == [r.run_id for r in stub.ListRuns(pb.ListRunsRequest()).runs] == sorted(walked)
    cancelled = stub.ListRuns(pb.ListRunsRequest(states=[pb.RUN_STATE_CANCELLED])).runs
    assert first.run_id in {r.run_id for r in cancelled} and {r.state for r in cancelled} == {pb.RUN_STATE_CANCELLED}
    for request, field in ((pb.ListRunsRequest(page_token="forged"), "page_token"),
                           (pb.ListRunsRequest(page_size=-5), "page_size"),
                           (pb.ListRunsRequest(states=[0]), "states[0]")):
        with pytest.raises(grpc.RpcError) as err:
            stub.ListRuns(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(field)
    names = stub.ListRewardClients(pb.ListRewardClientsRequest(page_size=1))
    assert [c.name for c in names.clients] == ["client-0"] and names.next_page_token


def test_faulty_and_slow_reward_clients_are_excluded_not_zeroed(tmp_path, model_cache):
    """One client answers NaN, one answers outside its range, one is slower than the deadline:
    their rewards are dropped, the honest expert's rewards train the policy, no step stalls."""
    clients = [
        ("add1", []),  # honest
        ("add1", ["--fault", "nan"]),
        ("add1", ["--fault", "out_of_range"]),
        ("add1", ["--fault-delay-seconds", "60"]),
    ]
    # No confidence graph: the slow client would only delay start-up by its probes' deadline.
    with federation(tmp_path, model_cache, clients, orchestrator_args=["--no-confidence-graph"]) as (stub, _, _):
        spec = pb.RunSpec(**{**SPEC, "tasks": ["add1"], "experts_per_question": 4, "steps": 2,
                              "reward_timeout_seconds": 2.0})
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
        events, run = wait(stub, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    steps = [e.step for e in events if e.HasField("step")]
    for s in steps:
        per_expert = s.completions
        assert s.rewards_received == per_expert  # only the honest client's
        assert not math.isnan(s.reward_mean)
    # Step 1 asks all four; the slow client misses three deadlines there, leaves selection, and
    # step 2 asks the three live ones.
    assert steps[0].rewards_dropped == 3 * steps[0].completions
    assert steps[1].rewards_dropped == 2 * steps[1].completions


def test_a_question_below_the_expert_quorum_is_dropped_and_trains_nothing(tmp_path, model_cache):
    """Of three experts per question only the honest one answers usably: one sends one reward too few
    (its row is excluded), one fails with INTERNAL (kept as a failure: asking again would fail again).
    With expert_quorum 2 every question is dropped; with 1 the honest expert's rewards train."""
    clients = [("add1", []), ("add1", ["--fault", "wrong_count"]), ("add1", ["--fault", "error"])]
    with federation(tmp_path, model_cache, clients, orchestrator_args=["--no-confidence-graph"]) as (stub, _, _):
        results = {}
        for quorum in (2, 1):
            spec = pb.RunSpec(**{**SPEC, "experts_per_question": 3, "expert_quorum": quorum, "steps": 2,
                                  "temperature": 1.5})
            run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
            results[quorum] = wait(stub, run.run_id)
    events, run = results[2]
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    steps = [e.step for e in events if e.HasField("step")]
    assert [s.questions_below_quorum for s in steps] == [SPEC["questions_per_step"]] * 2
    assert all(s.rewards_received == 0 and not s.rewards_by_client and s.train_seconds == 0 for s in steps)
    assert run.policy.version == 0  # nothing below quorum reached the trainer
    events, run = results[1]
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    steps = [e.step for e in events if e.HasField("step")]
    assert all(s.questions_below_quorum == 0 for s in steps)
    assert all(dict(s.rewards_by_client) == {"client-0": s.completions} for s in steps)
    assert all(s.rewards_dropped == 2 * s.completions and s.experts_replaced == 0 for s in steps)


def test_a_run_uses_only_the_reward_clients_it_names(fed):
    stub, _ = fed
    spec = pb.RunSpec(**{**SPEC, "tasks": ["mul1"], "steps": 1, "experts_per_question": 1,
                         "reward_clients": ["client-1"]})
    run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
    assert list(run.spec.reward_clients) == ["client-1"]
    events, run = wait(stub, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    step = next(e.step for e in events if e.HasField("step"))
    assert step.rewards_received == step.completions and step.routing_precision == 1.0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"reward_clients": ["client-9"]}, "spec.reward_clients"),
        ({"reward_clients": ["client-1", "client-1"]}, "spec.reward_clients"),
        ({"reward_clients": ["client-1"], "experts_per_question": 2}, "spec.experts_per_question"),
        ({"reward_clients": ["client-1"], "experts_per_question": 1, "tasks": ["sub1"]}, "spec.tasks"),
        ({"confidence_update_rate": 1.5}, "spec.confidence_update_rate"),
        ({"zero_signal_groups": 9}, "spec.zero_signal_groups"),
    ],
)
def test_run_specs_naming_unusable_clients_are_refused(fed, change, field):
    stub, _ = fed
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**{**SPEC, **change})))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()


def test_an_expert_that_leaves_mid_run_is_replaced_by_the_next_one(tmp_path, model_cache):
    """client-0 is every question's first choice; it is killed after step 1. The step that finds it
    gone re-scores with client-1 instead, so no reward is lost, and later steps route to client-1."""
    clients = [("add1", []), ("add1", [])]
    with federation(tmp_path, model_cache, clients, orchestrator_args=["--no-confidence-graph"]) as (
        stub, fed, services,
    ):
        spec = pb.RunSpec(**{**SPEC, "steps": 4, "experts_per_question": 1})
        run = stub.CreateRun(pb.CreateRunRequest(spec=spec))
        steps = []
        for event in stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=600):
            if event.HasField("step"):
                steps.append(event.step)
                if event.step.step == 1:
                    fed.stop(services["client-0"], grace=0.0)
        run = stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
        listed = {c.name: c.healthy for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    assert sum(s.experts_replaced for s in steps) >= 1
    assert all(s.rewards_dropped == 0 and s.rewards_received == s.completions for s in steps)
    assert listed == {"client-0": False, "client-1": True}


def test_a_poisoning_client_loses_its_questions_and_the_next_run_starts_from_the_probes(tmp_path, model_cache):
    """client-0 judges its first probes (the orchestrator's first pass: PROBES calls) honestly and
    inverts every reward after (an injected poisoning fault); client-1 and client-2 judge add1
    honestly. All three probe the same, so client-0, first by name, is an expert of step 1 (M = 2).
    With the online update on, each expert is measured against the other expert of its question
    (leave-one-out): step 1 demotes client-0 and client-1 alike, step 2 pairs client-0 with
    client-2 and demotes it again, and from step 3 the two honest clients agree and judge alone. A
    second run starts from the probed graph, not from the first run's confidence."""
    clients = [("add1", ["--fault", "poison", "--fault-after-calls", str(PROBES)]), ("add1", []), ("add1", [])]
    with federation(tmp_path, model_cache, clients) as (stub, _, services):
        spec = dict(SPEC, steps=4, expert_selection=pb.EXPERT_SELECTION_CONFIDENCE_GRAPH, confidence_update_rate=0.5)
        events, run = wait(stub, stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(**spec))).run_id)
        assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
        second_events, second = wait(stub, stub.CreateRun(pb.CreateRunRequest(
            spec=pb.RunSpec(**dict(spec, steps=1, confidence_update_rate=0.0)))).run_id)
        graph = json.loads(stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest()).graph_json)
        run_view = json.loads(stub.GetConfidenceGraph(pb.GetConfidenceGraphRequest(run_id=run.run_id)).graph_json)
        log_text = services["orchestrator"].log_path.read_text()
    steps = [e.step for e in events if e.HasField("step")]
    assert "client-0" in steps[0].rewards_by_client  # it judged, and was measured
    assert all("client-0" not in s.rewards_by_client for s in steps[2:])  # then lost its questions
    first = dict(steps[0].confidence_by_client)
    assert first["client-0"] == pytest.approx(0.5) and first["client-2"] == 1.0
    final = dict(steps[-1].confidence_by_client)
    assert final["client-0"] == pytest.approx(0.25)  # 0.5 * 0.5 + 0.5 * 0 at step 2, then unchanged
    assert min(final["client-1"], final["client-2"]) >= 0.5
    assert f"run {run.run_id} step 2: confidence client-0 0.250 (agreed 0.00)" in log_text
    assert {n["name"]: n["confidence"] for n in run_view["graph"]["nodes"] if n["kind"] == "client"} == final

    assert second.state == pb.RUN_STATE_SUCCEEDED, second.error
    start = [e.step for e in second_events if e.HasField("step")][0]
    assert dict(start.confidence_by_client) == {"client-0": 1.0, "client-1": 1.0, "client-2": 1.0}
    assert "client-0" in start.rewards_by_client  # routed by the probes again
    assert {n["name"]: n["confidence"] for n in graph["graph"]["nodes"] if n["kind"] == "client"} == {
        "client-0": 1.0, "client-1": 1.0, "client-2": 1.0,
    }
