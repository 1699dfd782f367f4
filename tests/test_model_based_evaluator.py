"""The model-based evaluator (ME): a client's own small model judging questions
it holds no labels for, alone in ground-truth-free mode.

Unit tests build the evaluator on the tiny policy; integration tests start
real reward client processes with ``--judge-model tiny-policy``.
"""

import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fedgrpo.job.launcher import Federation
from fedgrpo.services.reward_client.evaluators import ModelBasedEvaluator
from fedgrpo.tasks import build_questions
from fedgrpo.v1 import common_pb2
from fedgrpo.v1 import reward_client_pb2 as pb

from .conftest import START_TIMEOUT, reward_stub

ANSWER, MODEL = common_pb2.EVALUATOR_KIND_ANSWER_BASED, common_pb2.EVALUATOR_KIND_MODEL_BASED
BANK = 1000  # the reward client's default bank_size (bank_seed 0)


@pytest.fixture(scope="module")
def judge(model_cache) -> ModelBasedEvaluator:
    """The evaluator on the tiny policy (built once per session in ``model_cache/tiny-policy``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the client's default torch_threads; restored for the rest of the session
    yield ModelBasedEvaluator(model_cache / "tiny-policy", max_new_tokens=24)
    torch.set_num_threads(threads)


def _judged(judge: ModelBasedEvaluator, domain: str, *, want_wrong: bool = False):
    """A bank question of ``domain`` the judge answers with a number (a wrong one if asked and any exists)."""
    fallback = None
    for q in build_questions(domain, 0, BANK)[:40]:
        own = judge.own_answer(domain, q.text)
        if own is None:
            continue
        if not want_wrong or own != q.entry["answer"]:
            return q, own
        fallback = fallback or (q, own)
    assert fallback is not None, f"the tiny policy wrote no number on 40 {domain} questions"
    return fallback


# --- unit ---------------------------------------------------------------------------------------


def test_kind_range_and_it_can_judge_anything(judge):
    assert judge.kind == MODEL
    assert (judge.reward_min, judge.reward_max) == (0.0, 1.0)
    assert judge.can_judge("add1", "What is 1 + 1?") and judge.can_judge("mul1", "anything at all")


def test_own_answer_is_scored_like_the_answer_based_evaluator(judge):
    q, own = _judged(judge, "add1")
    wrong = str(int(float(own)) + 1)
    candidates = [own, f"The answer is {own}, I think.", wrong, f"maybe {wrong}", "no idea"]
    rewards = judge.score("add1", q.text, candidates)
    assert [round(r, 6) for r in rewards] == [1.0, 0.9, 0.1, 0.0, 0.0]
    assert rewards[0] >= 0.9 and rewards[2] <= 0.1
    assert all(0.0 <= r <= 1.0 for r in rewards)


def test_scores_are_deterministic_and_cached(judge):
    q = build_questions("mul1", 0, BANK)[7]
    candidates = ["12", "The product is 12.", "0", "x", "-3."]
    first = judge.score("mul1", q.text, candidates)
    generations = judge.generations
    assert judge.score("mul1", q.text, candidates) == first
    assert judge.generations == generations  # the second call did not generate again
    fresh = ModelBasedEvaluator(judge.model_dir, max_new_tokens=judge.max_new_tokens)
    assert fresh.score("mul1", q.text, candidates) == first  # greedy: same model, same rewards
    assert fresh.generations == 1


def test_cache_is_bounded_lru(judge):
    small = ModelBasedEvaluator(judge.model_dir, cache_size=2)
    a, b, c = (q.text for q in build_questions("add1", 0, BANK)[:3])
    assert len({a, b, c}) == 3
    for text in (a, b, a, c):  # a is used again before c arrives: b is the one evicted
        small.own_answer("add1", text)
    assert small.generations == 3
    small.own_answer("add1", a)
    assert small.generations == 3
    small.own_answer("add1", b)
    assert small.generations == 4


def test_no_number_from_the_judge_leaves_only_the_format_reward(judge):
    class Mute(ModelBasedEvaluator):
        def _generate(self, question: str) -> str:
            return "I do not know."

    mute = Mute(judge.model_dir)
    rewards = mute.score("add1", "Calculate 1 + 7.", ["8", "It is 8", "none"])
    assert [round(r, 6) for r in rewards] == [0.1, 0.0, 0.0]


# --- shared cache of the judge's replies ------------------------------------------------------------


def _rows(db) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT judge, max_new_tokens, domain, question, reply FROM judge_replies_v1").fetchall()


def test_a_second_judge_reads_the_shared_cache_instead_of_generating(judge, tmp_path):
    db = tmp_path / "judges" / "cache.sqlite"
    q = build_questions("add1", 0, BANK)[11]
    candidates = ["12", "The sum is 12.", "0", "x"]
    first = ModelBasedEvaluator(judge.model_dir, max_new_tokens=judge.max_new_tokens, shared_cache=db)
    rewards = first.score("add1", q.text, candidates)
    assert (first.generations, first.shared_hits) == (1, 0)
    assert rewards == judge.score("add1", q.text, candidates)  # exactly what it computes without sharing
    second = ModelBasedEvaluator(judge.model_dir, max_new_tokens=judge.max_new_tokens, shared_cache=db)
    assert second.score("add1", q.text, candidates) == rewards
    assert (second.generations, second.shared_hits) == (0, 1)
    assert second.score("add1", q.text, candidates) == rewards and second.shared_hits == 1  # now from its LRU
    shorter = ModelBasedEvaluator(judge.model_dir, max_new_tokens=judge.max_new_tokens - 1, shared_cache=db)
    shorter.score("add1", q.text, candidates)
    assert (shorter.generations, shorter.shared_hits) == (1, 0)  # another max_new_tokens: another key
    other_domain = second.score("sub1", q.text, candidates)  # (domain, question) is the key, not the text only
    assert second.generations == 1 and other_domain == rewards
    rows = _rows(db)
    assert len(rows) == 3 and all(r[4] is not None for r in rows)
    assert {r[1] for r in rows} == {judge.max_new_tokens, judge.max_new_tokens - 1}
    assert all(str(judge.model_dir.resolve()) in r[0] for r in rows)


def test_a_shared_reply_without_a_number_is_read_as_no_answer(judge, tmp_path):
    db = tmp_path / "cache.sqlite"

    class Mute(ModelBasedEvaluator):
        def _generate(self, question: str) -> str:
            return "I do not know."

    mute = Mute(judge.model_dir, shared_cache=db)
    assert mute.own_answer("add1", "Calculate 1 + 7.") is None and mute.generations == 1
    reader = ModelBasedEvaluator(judge.model_dir, shared_cache=db)
    rewards = reader.score("add1", "Calculate 1 + 7.", ["8", "It is 8", "none"])
    assert [round(r, 6) for r in rewards] == [0.1, 0.0, 0.0]  # a cached "no answer", not a miss
    assert (reader.generations, reader.shared_hits) == (0, 1)


def test_judges_asked_at_once_generate_each_question_once(judge, tmp_path):
    db = tmp_path / "cache.sqlite"
    texts = list(dict.fromkeys(q.text for q in build_questions("mul1", 0, BANK)[:24]))
    judges = [ModelBasedEvaluator(judge.model_dir, shared_cache=db) for _ in range(3)]
    with ThreadPoolExecutor(12) as pool:  # 4 threads per judge, as gRPC calls arrive
        answers = [pool.map(lambda t, j=j: j.own_answer("mul1", t), texts) for j in judges]
        answers = [list(a) for a in answers]
    assert sum(j.generations for j in judges) == len(texts)  # each question generated by one judge only
    assert sum(j.shared_hits for j in judges) == 2 * len(texts)  # the others read it from the file
    expected = [judge.own_answer("mul1", t) for t in texts]
    assert answers == [expected] * 3


def _claim(db, evaluator: ModelBasedEvaluator, question: str, owner_pid: int) -> None:
    """Write a claim on (add1, question) as a client process owner_pid of this host would."""
    with sqlite3.connect(db) as con:
        con.execute(
            "INSERT INTO judge_replies_v1 VALUES (?, ?, ?, ?, NULL, ?, ?)",
            (*evaluator._shared_key("add1", question), f"{socket.gethostname()}:{owner_pid}:x:y", time.time()),
        )


def test_a_claim_of_a_client_that_died_is_taken_over(judge, tmp_path):
    db = tmp_path / "cache.sqlite"
    e = ModelBasedEvaluator(judge.model_dir, shared_cache=db)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    q = build_questions("add1", 0, BANK)[3].text
    _claim(db, e, q, dead.pid)
    started = time.monotonic()
    assert e.own_answer("add1", q) == judge.own_answer("add1", q)
    assert e.generations == 1 and time.monotonic() - started < 5


def test_a_claim_is_waited_for_then_taken_over_when_too_old(judge, tmp_path):
    db = tmp_path / "cache.sqlite"
    e = ModelBasedEvaluator(judge.model_dir, shared_cache=db)
    e.shared_cache.claim_timeout = 1.0
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        q = build_questions("add1", 0, BANK)[4].text
        _claim(db, e, q, alive.pid)  # a live client that never writes its reply
        started = time.monotonic()
        assert e.own_answer("add1", q) == judge.own_answer("add1", q)
        assert 1.0 <= time.monotonic() - started < 10 and e.generations == 1
    finally:
        alive.kill()
        alive.wait()


# --- integration ----------------------------------------------------------------------------------

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def clients(tmp_path_factory, model_cache):
    """Two real reward clients holding add1 and the tiny policy as judge: one also uses its labels."""
    judge_args = ["--judge-model", "tiny-policy", "--cache-dir", str(model_cache), "--log-level", "INFO"]
    with Federation(tmp_path_factory.mktemp("me")) as fed:
        both = fed.start("both", "reward-client", ["--name", "both", "--domains", "add1", *judge_args])
        free = fed.start(
            "free", "reward-client", ["--name", "free", "--domains", "add1", "--ground-truth-free", *judge_args]
        )
        for s in (both, free):
            fed.wait_healthy(s, START_TIMEOUT)
        yield reward_stub(both.address), reward_stub(free.address), (both, free)


def _r(rewards: list[float]) -> list[float]:
    return [round(r, 6) for r in rewards]  # rewards travel as float32


def _score(stub, q, domain: str, candidates: list[str]) -> list[float]:
    request = pb.ScoreRequest(question_id=q.question_id, question=q.text, domain=domain, candidates=candidates)
    return _r(stub.Score(request).rewards)


@integration
def test_describe_lists_the_evaluators_in_use(clients):
    both, free, _ = clients
    d = both.Describe(pb.DescribeRequest())
    assert list(d.evaluator_kinds) == [ANSWER, MODEL]
    assert list(d.domains) == ["add1"] and (d.reward_min, d.reward_max) == (0.0, 1.0)
    f = free.Describe(pb.DescribeRequest())
    assert list(f.evaluator_kinds) == [MODEL]
    assert list(f.domains) == ["add1"]  # still the client's self-description


@integration
def test_held_questions_still_use_ground_truth(clients, judge):
    both, _, _ = clients
    q, own = _judged(judge, "add1", want_wrong=True)
    right = q.entry["answer"]
    candidates = [right, f"The sum is {right}.", own, "no idea"]
    expected = [1.0, 0.9, 1.0 if own == right else 0.1, 0.0]
    assert _score(both, q, "add1", candidates) == expected


@integration
def test_other_domains_are_judged_by_the_local_model(clients, judge):
    both, _, (service, _) = clients
    q, own = _judged(judge, "mul1")
    candidates = [own, q.entry["answer"], "It is 5.", "???", str(int(float(own)) + 1)]
    rewards = _score(both, q, "mul1", candidates)  # a domain it does not hold: no NOT_FOUND any more
    assert len(rewards) == len(candidates) and all(0.0 <= r <= 1.0 for r in rewards)
    assert rewards == _r(judge.score("mul1", q.text, candidates))
    assert rewards[0] == 1.0 and rewards[-1] == 0.1
    # an add1 text outside the bank is the judge's too
    assert _score(both, q, "add1", ["7"]) == _r(judge.score("add1", q.text, ["7"]))
    assert "MODEL_BASED" in service.log_path.read_text()


@integration
def test_ground_truth_free_client_ignores_its_labels(clients, judge):
    _, free, (_, service) = clients
    q, own = _judged(judge, "add1", want_wrong=True)
    right = q.entry["answer"]
    candidates = [right, f"The sum is {right}.", own, "no idea"]
    rewards = _score(free, q, "add1", candidates)
    assert rewards == _r(judge.score("add1", q.text, candidates))
    if own != right:  # the judge is wrong here: the right answer gets only its format reward
        assert rewards == [0.1, 0.0, 1.0, 0.0]
    assert "ground-truth-free" in service.log_path.read_text()


@pytest.fixture(scope="module")
def domainless(tmp_path_factory, model_cache):
    """Two real reward clients holding no domain, judging with the tiny policy and sharing its replies.

    One is started as a launcher does for an empty Dirichlet share (``--domains ""``), the other
    without ``--domains`` at all.
    """
    tmp = tmp_path_factory.mktemp("nodomain")
    db = tmp / "shared" / "judge.sqlite"
    judge_args = ["--judge-model", "tiny-policy", "--cache-dir", str(model_cache), "--judge-cache", str(db)]
    with Federation(tmp / "logs") as fed:
        empty = fed.start("empty", "reward-client", ["--name", "empty", "--domains", "", *judge_args])
        absent = fed.start("absent", "reward-client", ["--name", "absent", *judge_args])
        for s in (empty, absent):
            fed.wait_healthy(s, START_TIMEOUT)
        yield reward_stub(empty.address), reward_stub(absent.address), (empty, absent), db


@integration
def test_a_client_with_no_domain_judges_with_its_model_only(domainless, judge):
    empty, absent, services, db = domainless
    for stub in (empty, absent):
        d = stub.Describe(pb.DescribeRequest())
        assert list(d.domains) == [] and list(d.evaluator_kinds) == [MODEL]
        assert (d.reward_min, d.reward_max) == (0.0, 1.0)
    q, own = _judged(judge, "add1")
    candidates = [q.entry["answer"], own, f"It is {own}.", "no idea", str(int(float(own)) + 1)]
    rewards = _score(empty, q, "add1", candidates)  # a bank question: it holds no labels for it either
    assert len(rewards) == len(candidates) and all(0.0 <= r <= 1.0 for r in rewards)
    assert rewards == _r(judge.score("add1", q.text, candidates)) and rewards[1] == 1.0
    rows = _rows(db)
    assert [(r[2], r[3]) for r in rows] == [("add1", q.text)] and rows[0][4] is not None
    assert _score(absent, q, "add1", candidates) == rewards  # read from the shared file: same rewards
    assert len(_rows(db)) == 1
    m = build_questions("mul1", 0, BANK)[2]
    assert _score(absent, m, "mul1", ["7"]) == _r(judge.score("mul1", m.text, ["7"]))
    for service in services:
        log = service.log_path.read_text()
        assert "holds no labelled data: it judges with its own model only" in log and "domains none" in log
        assert str(db) in log


@integration
def test_unknown_judge_model_refuses_to_start(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedgrpo.cli", "reward-client", "--plaintext", "--domains", "add1", "--port", "1",
         "--judge-model", "no-such-model", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "judge_model" in proc.stderr and "no-such-model" in proc.stderr
