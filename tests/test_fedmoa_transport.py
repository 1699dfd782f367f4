"""Training rounds over the federation port, attacked: a real gRPC server on loopback, hostile clients as stubs.

The orchestrator's FederationServicer with its AdapterExchange and round book, exactly as `fedgrpo
orchestrator` wires them; the round is offered as the run loop offers it. Each client below does one
thing a compromised member might: the statuses it gets and what the round book keeps are checked.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
import torch

from fedgrpo.adapter_transfer import encode, sha256
from fedgrpo.v1 import federation_pb2 as fpb
from fedgrpo.v1 import federation_pb2_grpc as fpb_grpc
from fedgrpo.v1 import reward_client_pb2 as rpb
from services.orchestrator.clients import RewardClients
from services.orchestrator.federation import FederationServicer
from services.orchestrator.fedmoa.exchange import AdapterExchange
from services.orchestrator.fedmoa.rounds import Rounds
from services.reward_client.local_training.rounds import download, submission

GLOBAL = {"m.lora_A.weight": torch.zeros(4, 32), "m.lora_B.weight": torch.zeros(32, 4)}


@pytest.fixture
def port():
    clients = RewardClients([])
    exchange = AdapterExchange()
    server = grpc.server(futures.ThreadPoolExecutor(16))
    fpb_grpc.add_FederationServiceServicer_to_server(
        FederationServicer(clients, 5.0, plaintext=True, join_rate_limit="", exchange=exchange), server
    )
    bound = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{bound}")
    yield fpb_grpc.FederationServiceStub(channel), exchange
    channel.close()
    server.stop(0)
    clients.close()


def join(stub, name: str, local_training: bool = True) -> str:
    d = rpb.DescribeResponse(name=name, domains=["add1"], evaluator_kinds=[1], reward_min=0.0, reward_max=1.0,
                             local_training=local_training)
    return stub.Join(fpb.JoinRequest(description=d)).session_id


def offer(exchange: AdapterExchange, rounds: Rounds, names: list[str], quorum: int, deadline: float = 30.0):
    opened = rounds.open(1, names, deadline, quorum)
    payload = encode(GLOBAL)
    exchange.offer(rounds, fpb.TrainingRound(round_id=opened.round_id, round=1, attempt=opened.attempt,
                                             adapter_bytes=len(payload), adapter_sha256=sha256(payload)),
                   payload, names, opened.deadline)
    return opened


def trained(scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, scale) for k, v in GLOBAL.items()}


def send(stub, session: str, round_id: str, adapter: dict, tamper=None):  # noqa: ANN001
    requests = list(submission(session, round_id, encode(adapter), rollouts=8, weights={"correctness": 1.0},
                               mean_reward=0.5))
    if tamper:
        requests = tamper(requests)
    return stub.SubmitAdapter(iter(requests), timeout=10)


def status(call) -> grpc.StatusCode:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_rounds_carry_adapters_both_ways_and_refuse_every_bad_answer(port):
    stub, exchange = port
    names = ["honest", "twice", "nan", "shape", "checksum", "silent"]
    sessions = {n: join(stub, n) for n in names}
    outsider = join(stub, "outsider")
    scorer = join(stub, "scorer-only", local_training=False)
    rounds = Rounds("run-t")
    opened = offer(exchange, rounds, names, quorum=2, deadline=3.0)

    fetched = {n: stub.FetchRound(fpb.FetchRoundRequest(session_id=s, wait_seconds=1)).round
               for n, s in sessions.items()}
    assert all(r.round_id == opened.round_id for r in fetched.values())
    assert not stub.FetchRound(fpb.FetchRoundRequest(session_id=outsider, wait_seconds=0.2)).HasField("round")
    assert status(lambda: stub.FetchRound(fpb.FetchRoundRequest(session_id=scorer, wait_seconds=0))) == \
        grpc.StatusCode.FAILED_PRECONDITION
    r = fetched["honest"]
    got = download(stub, sessions["honest"], r, max_bytes=1 << 20, timeout=10)
    assert got == encode(GLOBAL)
    assert status(lambda: list(stub.DownloadAdapter(fpb.DownloadAdapterRequest(
        session_id=outsider, round_id=r.round_id)))) == grpc.StatusCode.PERMISSION_DENIED

    send(stub, sessions["honest"], r.round_id, trained(1.0))
    send(stub, sessions["twice"], r.round_id, trained(2.0))
    # A second answer, good or bad, changes nothing.
    assert status(lambda: send(stub, sessions["twice"], r.round_id, trained(9.0))) == grpc.StatusCode.ALREADY_EXISTS
    # A round it was not sent, and a round that does not exist.
    assert status(lambda: send(stub, outsider, r.round_id, trained())) == grpc.StatusCode.PERMISSION_DENIED
    assert status(lambda: send(stub, sessions["silent"], "run-t/round-9/attempt-1-0", trained())) == \
        grpc.StatusCode.NOT_FOUND
    # Bad adapters: refused with INVALID_ARGUMENT naming what is wrong, recorded as that client's answer.
    nan = trained()
    nan["m.lora_B.weight"][0, 0] = float("nan")
    with pytest.raises(grpc.RpcError) as err:
        send(stub, sessions["nan"], r.round_id, nan)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        send(stub, sessions["shape"], r.round_id, {"m.lora_A.weight": torch.ones(4, 31),
                                                   "m.lora_B.weight": torch.ones(32, 4)})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape (4, 31)" in err.value.details()

    def flip_a_byte(requests):
        chunk = requests[1].chunk
        requests[1].chunk.data = bytes([chunk.data[0] ^ 1]) + chunk.data[1:]
        return requests
    with pytest.raises(grpc.RpcError) as err:
        send(stub, sessions["checksum"], r.round_id, trained(), tamper=flip_a_byte)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in err.value.details()
    assert status(lambda: send(stub, sessions["nan"], r.round_id, trained())) == grpc.StatusCode.ALREADY_EXISTS

    # "silent" never answers: the round ends at its deadline with the quorum of good adapters.
    rounds.wait(opened.round_id)
    outcome = rounds.close(opened.round_id)
    assert outcome.complete and set(outcome.accepted) == {"honest", "twice"}
    assert float(outcome.accepted["twice"].tensors["m.lora_A.weight"][0, 0]) == 2.0  # the first answer, kept
    assert set(outcome.rejected) == {"nan", "shape", "checksum"} and outcome.missing == {"silent"}
    assert status(lambda: send(stub, sessions["silent"], r.round_id, trained())) == \
        grpc.StatusCode.FAILED_PRECONDITION  # too late
    assert exchange.bytes_down[r.round_id]["honest"] == len(encode(GLOBAL))
    assert exchange.bytes_up[r.round_id]["honest"] == len(encode(trained(1.0)))


def test_below_quorum_a_round_is_tried_again_and_nothing_applied(port):
    stub, exchange = port
    sessions = {n: join(stub, n) for n in ("a", "b")}
    rounds = Rounds("run-q")
    first = offer(exchange, rounds, ["a", "b"], quorum=2, deadline=1.0)
    send(stub, sessions["a"], first.round_id, trained())
    time.sleep(1.1)
    assert not rounds.close(first.round_id).complete  # b missed the deadline: below the quorum of 2
    again = offer(exchange, rounds, ["a", "b"], quorum=2)
    assert again.attempt == 2 and again.round_id != first.round_id
    for name in ("a", "b"):
        r = stub.FetchRound(fpb.FetchRoundRequest(session_id=sessions[name], wait_seconds=1)).round
        assert r.round_id == again.round_id and r.attempt == 2
        send(stub, sessions[name], r.round_id, trained())
    assert rounds.close(again.round_id).complete


def test_malformed_streams_are_refused(port):
    stub, exchange = port
    session = join(stub, "a")
    rounds = Rounds("run-m")
    opened = offer(exchange, rounds, ["a"], quorum=1)
    assert status(lambda: stub.SubmitAdapter(iter([]), timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    chunk_first = [fpb.SubmitAdapterRequest(session_id=session, chunk=fpb.AdapterChunk(index=0, data=b"x",
                                                                                      sha256=sha256(b"x")))]
    assert status(lambda: stub.SubmitAdapter(iter(chunk_first), timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    huge = [fpb.SubmitAdapterRequest(session_id=session, header=fpb.AdapterHeader(
        round_id=opened.round_id, total_bytes=1 << 40, sha256="0" * 64))]
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitAdapter(iter(huge), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "total_bytes" in err.value.details()


def test_repeated_downloads_and_parallel_uploads_are_bounded(port):
    stub, exchange = port
    session = join(stub, "greedy")
    opened = offer(exchange, Rounds("run-b"), ["greedy"], quorum=1)
    r = stub.FetchRound(fpb.FetchRoundRequest(session_id=session, wait_seconds=1)).round
    for _ in range(3):
        download(stub, session, r, 1 << 20, 10)
    assert status(lambda: download(stub, session, r, 1 << 20, 10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # An upload left open (header sent, chunks withheld) holds the client's one upload slot.
    release = threading.Event()
    header = next(submission(session, opened.round_id, encode(trained()), 8, {}, 0.0))

    def stalled():
        yield header
        release.wait(10)
    first = stub.SubmitAdapter.future(stalled(), timeout=20)
    while "greedy" not in exchange._offer.uploading:  # noqa: SLF001 - until the server holds the first stream
        time.sleep(0.01)
    assert status(lambda: send(stub, session, opened.round_id, trained())) == grpc.StatusCode.RESOURCE_EXHAUSTED
    release.set()
    with pytest.raises(grpc.RpcError) as err:
        first.result()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # it ended short of its declared size
