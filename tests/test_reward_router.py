"""MoR's router against cases computed by hand: the gate's math, a probe's error, a noisy or constant
client learned away, a client exact on one domain dominating there, and missing probes left out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedgrpo.services.orchestrator.advantages import consensus_rewards
from fedgrpo.services.orchestrator.reward_router import fit_router, gate_weights, probe_error

C = 8  # candidates per probe


def probe(rng, judge) -> float:
    """One probe with the client's own random candidates (half right), judged by ``judge(truth)``."""
    truth = rng.permutation([1.0] * (C // 2) + [0.0] * (C // 2))
    return probe_error(judge(truth), truth)


def exact(truth):
    return truth


def test_gate_weights_and_probe_error_by_hand():
    w = gate_weights(np.array([0.0, math.log(3.0), 5.0]), np.array([True, True, False]))
    assert w.tolist() == pytest.approx([0.25, 0.75, 0.0])
    assert gate_weights(np.array([1.0, 2.0]), np.array([False, False])).tolist() == [0.0, 0.0]
    assert probe_error([1.0, 0.0, 0.5, 0.9], [True, False, True, False]) == pytest.approx((0.25 + 0.81) / 4)
    with pytest.raises(ValueError, match="equally long"):
        probe_error([1.0], [True, False])


def test_unfitted_router_is_the_mean_fusion():
    errors = np.array([[0.0, 0.4], [0.2, 0.2], [0.1, 0.5]])
    fit = fit_router(["a", "b"], np.eye(3), errors, steps=0)
    assert fit.weights(np.array([[1.0, 2.0, 3.0]]))[0] == {"a": 0.5, "b": 0.5}
    assert fit.loss == fit.uniform_loss == pytest.approx((0.2 + 0.2 + 0.3) / 3)  # by hand


def test_a_noisy_client_and_a_constant_client_are_learned_away():
    rng = np.random.default_rng(0)
    errors = np.array([[probe(rng, exact), probe(rng, lambda t: rng.random(C)), probe(rng, lambda t: np.full(C, 0.9))]
                       for _ in range(60)])
    fit = fit_router(["exact", "noise", "constant"], rng.normal(size=(60, 8)), errors)
    for w in fit.weights(rng.normal(size=(5, 8))):
        assert w["exact"] > 0.95 and w["noise"] < 0.03 and w["constant"] < 0.03
    assert fit.loss < 0.01 < fit.uniform_loss


def test_a_client_exact_on_one_domain_dominates_there():
    rng = np.random.default_rng(1)
    domain = np.repeat([0, 1], 40)
    features = np.where(domain[:, None] == 0, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) + rng.normal(0, 0.05, (80, 3))
    noise = lambda t: rng.random(C)  # noqa: E731
    errors = np.array(
        [[probe(rng, exact if d == 0 else noise), probe(rng, exact if d == 1 else noise)] for d in domain]
    )
    fit = fit_router(["a", "b"], features, errors, steps=600)
    on_0, on_1 = fit.weights(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert on_0["a"] > 0.9 and on_1["b"] > 0.9
    # Only the clients that scored a question share its weight.
    assert fit.weights(np.array([[1.0, 0.0, 0.0]]), available=[["b"]])[0] == {"b": 1.0}


def test_missing_probes_are_left_out_of_the_fit_and_the_fusion():
    rng = np.random.default_rng(2)
    errors = np.array([[probe(rng, exact), probe(rng, lambda t: rng.random(C))] for _ in range(40)])
    errors[::2, 0] = np.nan  # never probed on half the items
    errors[1, :] = np.nan  # an item nobody could be probed on
    fit = fit_router(["spotty", "noise"], rng.normal(size=(40, 4)), errors)
    assert math.isfinite(fit.loss) and fit.items == 39
    w = fit.weights(rng.normal(size=(1, 4)))[0]
    assert w["spotty"] > 0.9
    # The fusion is consensus_rewards with the router's weights: a missing reward renormalises.
    fused = consensus_rewards([[1.0, math.nan], [0.0, 0.0]], [w["spotty"], w["noise"]])
    assert fused == pytest.approx([w["spotty"], 0.0])


def test_the_fit_is_deterministic_and_checks_its_input():
    rng = np.random.default_rng(3)
    errors = rng.random((20, 2))
    features = rng.normal(size=(20, 4))
    one, two = fit_router(["a", "b"], features, errors), fit_router(["a", "b"], features, errors)
    assert np.array_equal(one.W, two.W) and np.array_equal(one.b, two.b)
    with pytest.raises(ValueError, match="errors must have shape"):
        fit_router(["a"], features, errors)
    with pytest.raises(ValueError, match="no finite value"):
        fit_router(["a", "b"], features, np.full(errors.shape, np.nan))
    with pytest.raises(ValueError, match="features must be finite"):
        fit_router(["a", "b"], np.full((20, 4), np.nan), errors)


def test_a_runs_router_is_a_softmax_over_the_runs_own_clients(tmp_path):
    """Three real reward clients on loopback, probed by the orchestrator's router: ``central`` holds the
    labels of both domains, ``a`` only add1's and ``b`` only sub1's. Over every client, central takes
    nearly all the weight everywhere; a run that may fuse only a and b gets a router fitted over them
    (not central's fit with central masked out, whose gate never had to tell a from b): a leads on add1
    and b on sub1."""
    from fedgrpo import serving
    from fedgrpo.job.launcher import free_port
    from fedgrpo.services.orchestrator.auxiliary import auxiliary_items
    from fedgrpo.services.orchestrator.clients import RewardClients
    from fedgrpo.services.orchestrator.embedding import MiniLMEmbedder
    from fedgrpo.services.orchestrator.routing import ExpertRouter
    from fedgrpo.services.reward_client.config import RewardClientSettings
    from fedgrpo.services.reward_client.evaluators import AnswerBasedEvaluator
    from fedgrpo.services.reward_client.server import RewardClientServicer
    from fedgrpo.v1 import reward_client_pb2_grpc as rpb_grpc

    servers, addresses = [], []
    for name, domains in (("central", ["add1", "sub1"]), ("a", ["add1"]), ("b", ["sub1"])):
        settings = RewardClientSettings(name=name, domains=domains, bank_size=200, plaintext=True, port=free_port())
        servicer = RewardClientServicer(
            settings, [AnswerBasedEvaluator.from_bank(domains, settings.bank_seed, settings.bank_size)])
        server, _ = serving.build_server(
            serving.Endpoint([(rpb_grpc.add_RewardClientServiceServicer_to_server, servicer, name)], settings.port),
            settings)
        server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{settings.port}")
    clients = RewardClients(addresses)
    try:
        clients.wait_for_all(30)
        items = auxiliary_items(["add1", "sub1"], 16, 0, 200)
        router = ExpertRouter(clients, MiniLMEmbedder("cpu"), items, neighbours=4)
        router.probe_new_clients()
        everyone = router.router_domain_weights()
        pair = router.router_domain_weights(["a", "b"])
    finally:
        clients.close()
        for server in servers:
            server.stop(0)
    assert set(everyone) == {"central", "a", "b"} and set(pair) == {"a", "b"}
    assert min(everyone["central"].values()) > 0.5
    assert pair["a"]["add1"] > 0.5 > pair["a"]["sub1"]
    assert pair["b"]["sub1"] > 0.5 > pair["b"]["add1"]
    for domain in ("add1", "sub1"):
        assert math.fsum(pair[n][domain] for n in pair) == pytest.approx(1.0)
