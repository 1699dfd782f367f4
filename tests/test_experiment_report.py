"""The experiment's figures and claims, computed by hand; the settings' presets and refusals."""

import math

import pytest
from pydantic import ValidationError

from fedgrpo.job.experiment import ExperimentSettings, method_spec
from fedgrpo.job.experiment_report import MethodRun, claims, render_markdown, summarise


def run(method, seed, add1, sub1, precision=1.0, wire=None, steps=2):
    return MethodRun(
        method, seed, f"r{seed}", {"add1": add1, "sub1": sub1}, (add1 + sub1) / 2,
        steps=[{"reward_mean": 0.1 * (i + 1), "routing_precision": precision} for i in range(steps)],
        wire=wire or {}, n_steps=steps, seconds=10.0 * (seed + 1),
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


def test_one_seed_has_zero_spread():
    s = summarise([run("zero_shot", -1, 0.4, 0.2, steps=0)])["zero_shot"]
    assert s["average"] == {"mean": pytest.approx(0.3), "std": 0.0}
    assert math.isnan(s["routing_precision"]) and s["reward_curve"] == []


def test_claims_report_what_holds_and_what_does_not():
    summary = summarise([
        run("zero_shot", -1, 0.4, 0.2, steps=0),
        run("fedgrpo", 0, 0.6, 0.4, precision=0.95),
        run("random", 0, 0.62, 0.4, precision=0.4),
        run("centralised", 0, 0.7, 0.4),
        run("gt_free", 0, 0.45, 0.2),
    ])
    got = {c["claim"]: c for c in claims(summary, experts=2, clients=5)}
    assert got["routing precision >= 0.9"]["holds"]
    assert "random selection 0.400 (M/K = 0.40)" in got["routing precision >= 0.9"]["numbers"]
    assert not got["FedGRPO beats random expert selection"]["holds"]
    assert not got["FedGRPO within 3 points of centralised GRPO"]["holds"]  # 0.50 vs 0.55
    assert got["ground-truth-free FedGRPO beats zero-shot"]["holds"]


def test_markdown_has_the_table_and_the_claims():
    records = [run("zero_shot", -1, 0.4, 0.2, steps=0), run("fedgrpo", 0, 0.6, 0.4, wire={"a": (10, 2)})]
    summary = summarise(records)
    settings = ExperimentSettings(domains=["add1", "sub1"], seeds=[0]).model_dump(mode="json")
    text = render_markdown({
        "settings": settings, "methods": summary, "wall_seconds": 120.0,
        "claims": claims(summary, 2, 5), "holdings": {"client-0": ["add1"], "client-1": []},
        "graph_accuracy": {"client-0": {"add1": 1.0, "sub1": 0.75}}, "probe_bytes_per_client": 5000.0,
    })
    assert "| FedGRPO (confidence graph) | 0.600 ± 0.000 | 0.400 ± 0.000 | **0.500 ± 0.000** |" in text
    assert "| client-0 | add1 | add1 1.00, sub1 0.75 |" in text
    assert "routing precision >= 0.9" in text and "Wall time 2.0 min" in text


def test_scale_presets_apply_unless_an_option_is_given():
    default = ExperimentSettings()
    assert (default.clients, default.steps) == (5, 14) and "letter_counting" in default.domains
    large = ExperimentSettings(scale="large", steps=7)
    assert large.clients == 10 and large.steps == 7 and len(large.domains) == 8


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
    specs = {m: method_spec(s, m, 3, names) for m in ("fedgrpo", "random", "all", "centralised", "gt_free")}
    assert {(sp.steps, sp.seed, sp.questions_per_step, tuple(sp.tasks)) for sp in specs.values()} == {
        (14, 3, 2, tuple(s.domains))
    }
    assert specs["fedgrpo"].expert_selection == "confidence_graph" and list(specs["fedgrpo"].reward_clients) == [
        "client-0", "client-1"]
    assert specs["random"].expert_selection == "random"
    assert list(specs["centralised"].reward_clients) == ["central"] and specs["centralised"].experts_per_question == 1
    assert list(specs["gt_free"].reward_clients) == ["gtfree-0", "gtfree-1"]


def test_records_round_trip_for_resume(tmp_path):
    from fedgrpo.job.experiment import _record, _recorded

    records = []
    _record(tmp_path, records, run("fedgrpo", 0, 0.5, 0.3, wire={"a": (10, 2)}), started=0.0, earlier=100.0)
    back, elapsed = _recorded(tmp_path)
    assert elapsed > 100.0 and len(back) == 1
    assert summarise(back) == summarise(records)


def test_a_difference_within_the_seed_spread_is_called_not_significant():
    summary = summarise([
        run("fedgrpo", 0, 0.6, 0.4), run("fedgrpo", 1, 0.8, 0.6),  # average 0.6 +- 0.141
        run("random", 0, 0.55, 0.45), run("random", 1, 0.55, 0.45),  # average 0.5 +- 0
    ])
    claim = claims(summary, 2, 5)[1]
    assert claim["holds"] and "not significant" in claim["numbers"]
