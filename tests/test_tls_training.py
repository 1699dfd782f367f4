"""A short training run over mutual TLS, with one dialed and one joined client, on loopback.

The netns multi-host test also trains over TLS but needs root; this one runs
everywhere, so CI always covers TLS on every port a run touches: the API
(token), trainer, a dialed reward client's Score and a joined client's
long-poll.
"""

from __future__ import annotations

import pytest

from fedgrpo.certs import init_federation
from fedgrpo.v1 import orchestrator_pb2 as pb
from tests.conftest import federation
from tests.test_join import run_to_end, steps_of

pytestmark = pytest.mark.integration


def test_a_run_trains_over_mutual_tls_with_dialed_and_joined_clients(tmp_path, model_cache):
    certs = tmp_path / "certs"
    init_federation(certs, clients=["client-0", "joined-0"], hosts=["127.0.0.1", "localhost"])
    with federation(
        tmp_path, model_cache, clients=[("add1", [])], joined=[("add1", [])], certs=certs,
        orchestrator_args=["--auxiliary-size", "10", "--auxiliary-domains", "add1"],
    ) as (stub, _, _):
        listed = {c.name: c.healthy for c in stub.ListRewardClients(pb.ListRewardClientsRequest()).clients}
        assert listed == {"client-0": True, "joined-0": True}
        run = stub.CreateRun(pb.CreateRunRequest(spec=pb.RunSpec(
            tasks=["add1"], steps=2, questions_per_step=2, candidates_per_question=4, experts_per_question=2,
            max_tokens=8, expert_selection=pb.EXPERT_SELECTION_DOMAIN,
        )))
        run = run_to_end(stub, run.run_id)
    assert run.state == pb.RUN_STATE_SUCCEEDED, run.error
    steps = steps_of(run)
    assert [s["step"] for s in steps] == [1, 2]
    # Both clients scored every candidate of every step, over TLS.
    for s in steps:
        assert s["rewards_by_client"] == {"client-0": 2 * 4, "joined-0": 2 * 4}
    # The trainer applied both steps; step 2 was sampled while step 1 trained (max_async_level 1 by default),
    # so from the base policy, and the run ends on the second update.
    assert [int(s["policy_version"]) for s in steps] == [0, 0]
    assert [int(s.get("policy_lag", 0)) for s in steps] == [0, 1]
    assert run.policy.version == 2
