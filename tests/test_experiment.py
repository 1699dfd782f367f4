"""`fedgrpo experiment` end to end at the smallest scale: every method, real services, the tiny model.

What is checked is the machinery (one federation serving all methods, bytes
counted on the wire, the report and its plots), not the tiny model's
accuracy: the real comparison is `make experiment` with SmolLM2.
"""

import json

import pytest

from fedgrpo.job.experiment import ExperimentSettings, run_experiment

pytestmark = pytest.mark.integration


def test_experiment_runs_every_method_and_writes_the_report(tmp_path, model_cache):
    settings = ExperimentSettings(
        model="tiny-policy", judge_model="tiny-policy", cache_dir=model_cache, out_dir=tmp_path,
        domains=["add2", "chain3", "letter_counting"], clients=3, alpha=0.1, seeds=[0], steps=2,
        questions_per_step=2, candidates_per_question=4, max_tokens=8, judge_max_tokens=4, eval_questions=90,
        backend="transformers", learning_rate=1e-3, start_timeout=240,
    )
    report_path = run_experiment(settings)
    out = report_path.parent
    report = json.loads((out / "report.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["zero_shot", "fedgrpo", "random", "all", "centralised", "gt_free"]
    for key, m in methods.items():
        assert set(m["accuracy"]) == {"add2", "chain3", "letter_counting"}
        assert 0.0 <= m["average"]["mean"] <= 1.0
        if key != "zero_shot":
            assert len(m["reward_curve"]) == 2
            # every client the run used both received candidates and sent rewards, on the wire
            assert m["bytes_to_client_per_step"] > m["bytes_from_client_per_step"] > 0
    assert methods["centralised"]["routing_precision"] == 1.0  # the central client holds every domain
    assert methods["centralised"]["clients_used"] == ["central"]
    assert methods["gt_free"]["clients_used"] == ["gtfree-0", "gtfree-1", "gtfree-2"]
    assert methods["fedgrpo"]["clients_used"] == ["client-0", "client-1", "client-2"]
    # the split gives every domain a holder; the graph probed every client
    held = {d for name, h in report["holdings"].items() if name.startswith("client-") for d in h}
    assert held == {"add2", "chain3", "letter_counting"}
    assert set(report["graph_accuracy"]) >= {"client-0", "gtfree-0", "central"}
    assert report["probe_bytes_per_client"] > 0
    # the held-out questions: none trained on or probed, counted per domain
    assert report["held_out"]["overlaps"] == {"held_out_training": 0, "held_out_auxiliary": 0, "training_auxiliary": 0}
    # 270 questions: more than one Generate call takes (256)
    assert report["held_out"]["questions_per_domain"] == {"add2": 90, "chain3": 90, "letter_counting": 90}
    assert all(len(r["correct"][d]) == 90 for r in report["runs"] for d in r["correct"])
    got = {c["claim"]: c for c in report["claims"]}
    assert set(got) == {"routing precision >= 0.9", "FedGRPO beats zero-shot", "FedGRPO beats all clients averaged",
                        "FedGRPO beats random expert selection",
                        "FedGRPO within 3 points of centralised GRPO", "ground-truth-free FedGRPO beats zero-shot"}
    for c in got.values():
        assert c["verdict"] in ("holds", "does not hold", "inconclusive")
        if "interval" in c:
            assert c["interval"][0] <= c["difference"] <= c["interval"][1] and c["questions"] == 270
    assert {m["rollouts_per_question"] for k, m in methods.items() if k != "zero_shot"} == {4}
    text = report_path.read_text()
    assert "| zero-shot |" in text and "## Claims" in text and "270 evaluation questions" in text
    for png in ("accuracy_by_method.png", "reward_curves.png", "confidence_graph.png", "confidence_graph_gt_free.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
