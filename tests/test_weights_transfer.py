"""Policy weights over gRPC (DownloadPolicyWeights), so trainer and orchestrator need no shared storage.

Against a real trainer process with the tiny model: a streamed version is
byte for byte the trainer's snapshot; every bad request gets its status and
field; a snapshot pruned while it streams still arrives whole; and a whole
run with ``--weights-transfer grpc`` samples from, and exports, the copies it
streamed, never the trainer's folder.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import grpc
import pytest

from fedgrpo.client.downloads import write_artifacts
from fedgrpo.job.launcher import Federation
from fedgrpo.services.orchestrator.artifacts import chunks
from fedgrpo.services.orchestrator.policy_weights import StreamedWeights
from fedgrpo.services.policy_trainer.weights_download import open_snapshot
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import orchestrator_pb2 as opb
from fedgrpo.v1 import policy_trainer_pb2 as pb
from tests.conftest import federation, trainer_stub
from tests.test_join import run_to_end
from tests.test_trainer_service import OPTIMIZER, batch, start_trainer

pytestmark = pytest.mark.integration


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_streamed_version_is_the_trainers_snapshot_and_bad_requests_are_refused(tmp_path, model_cache):
    with Federation(tmp_path / "logs") as fed:
        service = start_trainer(fed, "trainer", model_cache, tmp_path / "state", checkpoint_every=10)
        stub = trainer_stub(service.address)
        stub.StartPolicy(pb.StartPolicyRequest(run_id="w1", optimizer=OPTIMIZER))
        versions = [stub.Train(batch(step, step - 1, run_id="w1")).policy for step in (1, 2, 3)]
        weights = StreamedWeights(stub, tmp_path / "weights", model_cache / "tiny-policy")

        local = weights(versions[-1])
        assert local == tmp_path / "weights" / "w1" / "v3"
        assert local != Path(versions[-1].weights_path)
        theirs = digests(Path(versions[-1].weights_path))
        assert "model.safetensors" in theirs and digests(local) == theirs
        assert weights(common_pb2.PolicyVersion(run_id="w1", version=0)) == model_cache / "tiny-policy"

        def refused(run_id: str, version: int) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as err:
                list(stub.DownloadPolicyWeights(pb.DownloadPolicyWeightsRequest(run_id=run_id, version=version)))
            return err.value

        err = refused("w1", 0)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in err.details()
        err = refused("w1", 4)  # not published
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to 3" in err.details()
        err = refused("w1", 1)  # pruned: the trainer keeps the newest 2
        assert err.code() == grpc.StatusCode.NOT_FOUND and "--keep-snapshots" in err.details()
        err = refused("other", 3)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "run_id" in err.details()
        err = refused("bad id!", 3)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "run_id" in err.details()


def test_a_snapshot_pruned_while_it_streams_arrives_whole(tmp_path, model_cache):
    snapshot = tmp_path / "v7"
    shutil.copytree(model_cache / "tiny-policy", snapshot)
    expected = digests(snapshot)
    files = open_snapshot(snapshot)
    shutil.rmtree(snapshot)  # pruned by a newer version after the call opened it
    stream = chunks(-1, files, chunk_bytes=4096, max_bytes=1 << 40)
    write_artifacts(stream, tmp_path / "copy")
    assert digests(tmp_path / "copy") == expected


def test_a_run_without_shared_storage_samples_and_exports_what_it_streamed(tmp_path, model_cache):
    weights_dir = tmp_path / "orchestrator-weights"
    with federation(tmp_path, model_cache, clients=[("add1", [])],
                    orchestrator_args=["--weights-transfer", "grpc", "--weights-dir", str(weights_dir)]) as (
            stub, _, _):
        run = stub.CreateRun(opb.CreateRunRequest(spec=opb.RunSpec(
            tasks=["add1"], steps=3, questions_per_step=2, candidates_per_question=4, experts_per_question=1,
            max_tokens=6, expert_selection=opb.EXPERT_SELECTION_DOMAIN,
        )))
        run = run_to_end(stub, run.run_id)
    assert run.state == opb.RUN_STATE_SUCCEEDED, run.error
    assert run.policy.version == 3
    # At most the newest two streamed versions are kept; the exported model is the last one, byte for byte
    # the trainer's.
    kept = sorted(p.name for p in (weights_dir / run.run_id).iterdir())
    assert "v3" in kept and len(kept) <= 2, kept
    final = digests(weights_dir / run.run_id / "v3")
    assert final == digests(Path(run.policy.weights_path))
    assert digests(Path(run.artifacts_path) / "model") == final
    log = (tmp_path / "logs" / "orchestrator.log").read_text()
    assert "streamed from the trainer" in log
