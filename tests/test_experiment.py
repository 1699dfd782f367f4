"""`fedgrpo experiment` end to end at the smallest scale: every method, real services, the tiny model.

What is checked is the machinery (each labelled client building its own
reward model with the `fedgrpo reward-model` commands and judging with it,
one federation serving all methods, the MoR router's weights, bytes counted
on the wire, the report and its plots), not the tiny model's accuracy: the
real comparison is `make experiment` with SmolLM2.
"""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedgrpo.job.experiment import ExperimentSettings, run_experiment

pytestmark = pytest.mark.integration


def test_experiment_runs_every_method_and_writes_the_report(tmp_path, model_cache):
    settings = ExperimentSettings(
        model="tiny-policy", judge_model="tiny-policy", cache_dir=model_cache, out_dir=tmp_path,
        domains=["add2", "chain3", "letter_counting"], clients=3, alpha=0.1, seeds=[0], steps=2,
        questions_per_step=2, candidates_per_question=4, max_tokens=8, judge_max_tokens=4, eval_questions=90,
        backend="transformers", learning_rate=1e-3, start_timeout=240, reward_model_questions=8,
        reward_model_samples=2, report_to="tensorboard",
    )
    report_path = run_experiment(settings)
    out = report_path.parent
    report = json.loads((out / "report.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["zero_shot", "fedgrpo", "random", "all", "centralised", "gt_free", "mor", "fedmoa",
                             "fedavg_lora"]
    for key, m in methods.items():
        assert set(m["accuracy"]) == {"add2", "chain3", "letter_counting"}
        assert 0.0 <= m["average"]["mean"] <= 1.0
        if key != "zero_shot":
            if key in ("fedmoa", "fedavg_lora"):  # one round: the rollouts of 2 steps spent by the local clients
                assert len(m["reward_curve"]) == 1
                # every local client downloaded the global adapter and uploaded its own, on the wire
                assert m["bytes_to_client_per_step"] > 100_000 and m["bytes_from_client_per_step"] > 100_000
                continue
            assert len(m["reward_curve"]) == 2
            # every client the run used both received candidates and sent rewards, on the wire
            assert m["bytes_to_client_per_step"] > m["bytes_from_client_per_step"] > 0
    assert methods["centralised"]["routing_precision"] == 1.0  # the central client holds every domain
    assert methods["centralised"]["clients_used"] == ["central"]
    assert methods["gt_free"]["clients_used"] == ["gtfree-0", "gtfree-1", "gtfree-2"]
    assert methods["fedgrpo"]["clients_used"] == ["client-0", "client-1", "client-2"]
    assert methods["mor"]["clients_used"] == ["client-0", "client-1", "client-2"]
    # The same organisations train locally for the parameter-exchange arms (those holding labels).
    local = [name.replace("client-", "local-") for name, h in report["holdings"].items()
             if name.startswith("client-") and h]
    assert methods["fedmoa"]["clients_used"] == methods["fedavg_lora"]["clients_used"] == local
    assert methods["fedmoa"]["rollouts_per_run"] == len(local) * 2 * 4 and methods["fedgrpo"]["rollouts_per_run"] == 16
    # Every client holding labels built its own reward model from its own file, and served it.
    labelled = [name for name, h in report["holdings"].items() if name.startswith("client-") and h]
    models = report["reward_models"]
    assert labelled and set(models) == {*labelled, *(n.replace("client-", "gtfree-") for n in labelled)}
    for name in labelled:
        m = models[name]
        assert m["preference_rows"] > 0 and m["train_pairs"] + m["held_out_pairs"] == m["preference_rows"]
        assert (out / "clients" / name / "reward-model" / "model.safetensors").is_file()
        assert "scores with its reward model" in "".join(p.read_text() for p in (out / "logs").rglob(f"{name}.log"))
    # The router over the mor arm's clients: each domain's weights sum to 1 over them.
    router = report["router_weights"]
    assert set(router) == {"client-0", "client-1", "client-2"}
    for domain in ("add2", "chain3", "letter_counting"):
        assert sum(router[c][domain] for c in router) == pytest.approx(1.0, abs=1e-6)
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
                        "FedGRPO within 3 points of centralised GRPO", "ground-truth-free FedGRPO beats zero-shot",
                        "MoR beats zero-shot", "FedGRPO beats MoR", "FedMOA beats zero-shot",
                        "FedMOA beats FedAvg of LoRA adapters", "FedGRPO beats FedMOA",
                        "FedGRPO moves >= 1000x fewer bytes per step than LoRA exchange"}
    for c in got.values():
        assert c["verdict"] in ("holds", "does not hold", "inconclusive")
        if "interval" in c:
            assert c["interval"][0] <= c["difference"] <= c["interval"][1] and c["questions"] == 270
    assert {m["rollouts_per_question"] for k, m in methods.items() if k != "zero_shot"} == {4}
    traffic = got["FedGRPO moves >= 1000x fewer bytes per step than LoRA exchange"]
    assert traffic["ratio"] > 1  # the tiny policy's adapter is small; SmolLM2's is what the goal is about
    text = report_path.read_text()
    assert "## Communication" in text and "x the bytes of FedGRPO per client per step" in text
    assert "| zero-shot |" in text and "## Claims" in text and "270 evaluation questions" in text
    assert "## Client reward models (MoR)" in text and "## The reward router (mor arm)" in text
    # --report-to tensorboard: one TensorBoard run per method and seed, its steps' rewards as scalars
    for method in ("fedgrpo", "mor"):
        events = EventAccumulator(str(out / "tensorboard" / f"{method}-s0"))
        events.Reload()
        assert [e.step for e in events.Scalars("train/reward_mean")] == [1, 2]
    for png in ("accuracy_by_method.png", "reward_curves.png", "confidence_graph.png", "confidence_graph_gt_free.png",
                "router_weights.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
