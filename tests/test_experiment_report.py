"""The experiment's figures and claims, computed by hand; the settings' presets and refusals; --resume."""

import json
import math

import pytest
from pydantic import ValidationError

from fedgrpo.job.experiment import ExperimentSettings, method_spec
from fedgrpo.job.experiment_report import MethodRun, _mean_router, claims, render_markdown, summarise
from fedgrpo.v1 import orchestrator_pb2 as pb

QUESTIONS = 100  # per domain


def correct_at(rate, offset=0):
    """QUESTIONS answers of which a share ``rate`` is right, the right ones starting at ``offset``."""
    right = round(rate * QUESTIONS)
    return [int((i - offset) % QUESTIONS < right) for i in range(QUESTIONS)]


def run(method, seed, add1, sub1, precision=1.0, wire=None, steps=2, offset=0):
    return MethodRun(
        method, seed, f"r{seed}", {"add1": add1, "sub1": sub1}, (add1 + sub1) / 2,
        steps=[{"reward_mean": 0.1 * (i + 1), "routing_precision": precision} for i in range(steps)],
        wire=wire or {}, n_steps=steps, seconds=10.0 * (seed + 1),
        correct={"add1": correct_at(add1, offset), "sub1": correct_at(sub1, offset)}, held_out_digest="d1",
        rollouts_per_question=8 if steps else 0,
    )


def test_summary_is_mean_and_sample_std_over_seeds():
    records = [
        run("fedgrpo", 0, 0.5, 0.3, wire={"a": (1000, 200), "b": (3000, 600)}),
        run("fedgrpo", 1, 0.7, 0.5, precision=0.5, wire={"a": (2000, 400), "b": (2000, 400)}),
    ]
    s = summarise(records)["fedgrpo"]
    assert s["accuracy"]["add1"]["mean"] == pytest.approx(0.6)
    assert s["accuracy"]["add1"]["std"] == pytest.approx(math.sqrt(0.02))  # (0.1^2 + 0.1^2) / (2 - 1)
    assert s["average"]["mean"] == pytest.approx(0.5)
    assert s["routing_precision"] == pytest.approx(0.75)
    # per client per step: (500, 1500, 1000, 1000) to the clients, (100, 300, 200, 200) back
    assert s["bytes_to_client_per_step"] == pytest.approx(1000)
    assert s["bytes_from_client_per_step"] == pytest.approx(200)
    assert s["reward_curve"] == pytest.approx([0.1, 0.2])
    assert s["seconds_per_run"] == pytest.approx(15.0)


def test_a_parameter_exchange_run_has_no_routing_precision():
    exchange = run("fedmoa", 0, 0.5, 0.3, precision=0.0)
    exchange.steps = [{**step, "round": {"attempts": 1}} for step in exchange.steps]
    assert math.isnan(summarise([exchange])["fedmoa"]["routing_precision"])  # shown as "-", not 0.000


def test_one_seed_has_zero_spread():
    s = summarise([run("zero_shot", -1, 0.4, 0.2, steps=0)])["zero_shot"]
    assert s["average"] == {"mean": pytest.approx(0.3), "std": 0.0}
    assert math.isnan(s["routing_precision"]) and s["reward_curve"] == []


def test_claims_are_paired_with_intervals_and_verdicts():
    records = [
        run("zero_shot", -1, 0.4, 0.2, steps=0),
        # FedGRPO answers the same questions as random, and one more in every ten: a clear paired win
        *(run("fedgrpo", s, 0.6, 0.4, precision=0.95) for s in range(3)),
        *(run("random", s, 0.5, 0.3, precision=0.4) for s in range(3)),
        # centralised is right on other questions at nearly the same rate: the difference is noisy
        *(run("centralised", s, 0.62, 0.4, offset=50) for s in range(3)),
        *(run("gt_free", s, 0.1, 0.1) for s in range(3)),
    ]
    summary = summarise(records)
    got = {c["claim"]: c for c in claims(summary, experts=2, clients=5, records=records)}
    assert got["routing precision >= 0.9"]["verdict"] == "holds"
    assert "random selection 0.400 (M/K = 0.40)" in got["routing precision >= 0.9"]["numbers"]
    win = got["FedGRPO beats random expert selection"]
    assert win["verdict"] == "holds" and win["difference"] == pytest.approx(0.1) and win["interval"][0] > 0
    assert (win["seeds"], win["questions"]) == (3, 200)
    near = got["FedGRPO within 3 points of centralised GRPO"]
    assert near["verdict"] == "inconclusive" and near["interval"][0] < -0.03 < near["interval"][1]
    worse = got["ground-truth-free FedGRPO beats zero-shot"]  # 0.1 vs zero-shot's 0.3, same questions
    assert worse["verdict"] == "does not hold" and worse["interval"][1] < 0 and worse["seeds"] == 3
    over_zero_shot = got["FedGRPO beats zero-shot"]  # zero-shot's one evaluation pairs with every seed
    assert over_zero_shot["verdict"] == "holds" and over_zero_shot["difference"] == pytest.approx(0.2)
    assert "FedGRPO beats all clients averaged" not in got  # no "all" runs: no claim, rather than a guess


def test_markdown_has_the_table_and_the_claims():
    records = [run("zero_shot", -1, 0.4, 0.2, steps=0), run("fedgrpo", 0, 0.6, 0.4, wire={"a": (10, 2)}),
               run("random", 0, 0.5, 0.3)]
    summary = summarise(records)
    settings = ExperimentSettings(domains=["add1", "sub1"], seeds=[0]).model_dump(mode="json")
    text = render_markdown({
        "settings": settings, "methods": summary, "wall_seconds": 120.0,
        "claims": claims(summary, 2, 5, records), "holdings": {"client-0": ["add1"], "client-1": []},
        "held_out": {"questions_per_domain": {"add1": 100, "sub1": 100}, "questions": 200, "seed": 7,
                     "overlaps": {"held_out_training": 0, "held_out_auxiliary": 0, "training_auxiliary": 0}},
        "graph_accuracy": {"client-0": {"add1": 1.0, "sub1": 0.75}}, "probe_bytes_per_client": 5000.0,
    })
    # one seed: the mean alone, no "± 0.000" pretending to be a spread
    assert "| FedGRPO (confidence graph) | 0.600 | 0.400 | **0.500** |" in text
    two = summarise([run("fedgrpo", 0, 0.6, 0.4), run("fedgrpo", 1, 0.4, 0.4)])
    spread = render_markdown({"settings": settings, "methods": two, "wall_seconds": 1.0, "claims": [],
                            "holdings": {}, "held_out": {}, "graph_accuracy": {}, "probe_bytes_per_client": 0.0})
    assert "| FedGRPO (confidence graph) | 0.500 ± 0.141 | 0.400 ± 0.000 | **0.450 ± 0.071** |" in spread
    assert "| client-0 | add1 | add1 1.00, sub1 0.75 |" in text
    assert "routing precision >= 0.9" in text and "Wall time 2.0 min" in text
    assert "200 evaluation questions (add1 100, sub1 100)" in text
    assert "held-out and training pool 0, held-out and auxiliary set 0, training pool and auxiliary set 0" in text
    assert "| FedGRPO (confidence graph) | 1.000 | 8 | 5 | 1 | 10 |" in text  # precision, rollouts, bytes, s
    # the paired claim: its difference, interval and verdict
    assert "| FedGRPO beats random expert selection | **holds** | +10.0 points | [+" in text
    assert "95% CI [" in text and "1 seed(s) x 200 questions, paired" in text


def test_the_report_says_how_good_each_reward_model_is_and_where_the_router_put_its_weight():
    records = [run("zero_shot", -1, 0.4, 0.2, steps=0), run("mor", 0, 0.5, 0.3), run("mor", 1, 0.5, 0.3)]
    records[1].router_weights = {"client-0": {"add1": 0.9, "sub1": 0.2}, "client-1": {"add1": 0.1, "sub1": 0.8}}
    records[2].router_weights = {"client-0": {"add1": 0.7, "sub1": 0.2}, "client-1": {"add1": 0.3, "sub1": 0.8}}
    model = {"name": "client-0", "folder": "x", "preference_rows": 180, "train_pairs": 150, "held_out_pairs": 30,
             "held_out_accuracy_before": 0.5, "held_out_accuracy_after": 0.9, "preference_seconds": 50.0,
             "training_seconds": 20.0}
    summary = summarise(records)
    settings = ExperimentSettings(domains=["add1", "sub1"], seeds=[0, 1]).model_dump(mode="json")
    router = _mean_router([r.router_weights for r in records if r.router_weights])
    assert router["client-0"]["add1"] == pytest.approx(0.8) and router["client-1"]["sub1"] == pytest.approx(0.8)
    text = render_markdown({
        "settings": settings, "methods": summary, "wall_seconds": 60.0, "claims": claims(summary, 2, 2, records),
        "holdings": {"client-0": ["add1"], "client-1": [], "gtfree-0": ["add1"], "central": ["add1", "sub1"]},
        "held_out": {}, "graph_accuracy": {"client-0": {"add1": 1.0, "sub1": 0.5}, "client-1": {"add1": 0.25}},
        "probe_bytes_per_client": 0.0, "reward_models": {"client-0": model, "gtfree-0": model},
        "router_weights": router,
    })
    assert "| client-0 | add1 | 180 | 0.500 -> 0.900 (30 pairs) | 50 + 20 | add1 1.00, sub1 0.50 |" in text
    assert "| gtfree-0 | add1 | 180 | 0.500 -> 0.900 (30 pairs) | 50 + 20 |  |" in text
    assert "| client-1 | - | - | (no labels: `smollm2-135m-instruct` judges) | - | add1 0.25 |" in text
    assert "| client-0 | 0.800 | 0.200 |" in text and "| client-1 | 0.200 | 0.800 |" in text
    assert "took 1.2 min in all" in text  # 50 + 20 s, the ground-truth-free copy's model counted once
    assert "MoR beats zero-shot" in text and "| MoR (reward router) |" in text


def test_scale_presets_apply_unless_an_option_is_given():
    default = ExperimentSettings()
    assert (default.clients, default.steps, default.eval_questions) == (5, 12, 100)
    assert "letter_counting" in default.domains
    large = ExperimentSettings(scale="large", steps=7)
    assert large.clients == 10 and large.steps == 7 and len(large.domains) == 5


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(domains=["add1", "nope"]), "unknown"),
        (dict(clients=2, experts_per_question=3), "experts_per_question"),
        (dict(seeds=[1, 1]), "twice"),
        (dict(clients=21), "clients"),
        (dict(methods=["fedgrpo", "magic"]), "methods"),
    ],
)
def test_bad_settings_are_refused_with_the_field(fields, message):
    with pytest.raises(ValidationError, match=message):
        ExperimentSettings(**fields)


def test_methods_differ_only_in_their_experts():
    s = ExperimentSettings(seeds=[3])
    names = {"federated": ["client-0", "client-1"], "gt_free": ["gtfree-0", "gtfree-1"], "central": ["central"]}
    specs = {m: method_spec(s, m, 3, names) for m in ("fedgrpo", "random", "all", "centralised", "gt_free", "mor")}
    assert {(sp.steps, sp.seed, sp.questions_per_step, tuple(sp.tasks)) for sp in specs.values()} == {
        (12, 3, 2, tuple(s.domains))
    }
    assert specs["fedgrpo"].expert_selection == pb.EXPERT_SELECTION_CONFIDENCE_GRAPH
    assert list(specs["fedgrpo"].reward_clients) == [
        "client-0", "client-1"]
    assert specs["random"].expert_selection == pb.EXPERT_SELECTION_RANDOM
    assert list(specs["centralised"].reward_clients) == ["central"] and specs["centralised"].experts_per_question == 1
    assert list(specs["gt_free"].reward_clients) == ["gtfree-0", "gtfree-1"]
    # MoR: the preset (every client, router fusion, KL to the base) over the federated clients, consensus reading
    mor = specs["mor"]
    assert (mor.preset, mor.expert_selection, mor.reward_reading) == (
        pb.PRESET_MOR, pb.EXPERT_SELECTION_ALL, pb.REWARD_READING_CONSENSUS)
    assert list(mor.reward_clients) == ["client-0", "client-1"] and not mor.HasField("beta")
    assert {sp.preset for m, sp in specs.items() if m != "mor"} == {pb.PRESET_FEDGRPO}


def test_records_round_trip_for_resume(tmp_path):
    from fedgrpo.job.experiment import _record, _recorded

    records = []
    _record(tmp_path, records, run("fedgrpo", 0, 0.5, 0.3, wire={"a": (10, 2)}), started=0.0, earlier=100.0)
    back, elapsed = _recorded(tmp_path, "d1")
    assert elapsed > 100.0 and len(back) == 1
    assert summarise(back) == summarise(records)
    assert back[0].correct == records[0].correct


def test_resume_refuses_records_without_per_question_results(tmp_path):
    from fedgrpo.job.experiment import _recorded

    old = run("fedgrpo", 0, 0.5, 0.3).to_json()
    for key in ("correct", "held_out_digest", "rollouts_per_question"):
        old.pop(key)  # a record written before paired claims
    (tmp_path / "records.jsonl").write_text(json.dumps(old) + "\n")
    with pytest.raises(SystemExit, match="fedgrpo seed 0 has no per-question results"):
        _recorded(tmp_path, "d1")


def test_resume_refuses_runs_evaluated_on_other_questions(tmp_path):
    from fedgrpo.job.experiment import _record, _recorded

    _record(tmp_path, [], run("random", 1, 0.5, 0.3), started=0.0, earlier=0.0)
    with pytest.raises(SystemExit, match="other held-out questions"):
        _recorded(tmp_path, "another")


def test_rollouts_per_question_are_stated_per_method():
    from fedgrpo.job.experiment import rollouts_per_question

    names = {"federated": ["client-0", "client-1"], "gt_free": ["gtfree-0", "gtfree-1"], "central": ["central"]}
    consensus = ExperimentSettings()
    assert {rollouts_per_question(method_spec(consensus, m, 0, names))
            for m in ("fedgrpo", "random", "all", "centralised", "gt_free")} == {8}
    pooled = ExperimentSettings(reward_reading="pooled")
    got = {m: rollouts_per_question(method_spec(pooled, m, 0, names)) for m in ("fedgrpo", "all", "centralised")}
    assert got == {"fedgrpo": 16, "all": 8, "centralised": 8}  # M x G where each expert scores its own block
