"""Services given a bad configuration refuse to start and say what to fix."""

import subprocess
import sys

import pytest

P = "--plaintext"


def start(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedgrpo.cli", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize(
    "args, words",
    [
        (["trainer", P, "--model", "gpt-9"], ["model", "unknown model 'gpt-9'", "tiny-policy"]),
        (["trainer", "--device", "tpu"], ["device", "--device / FEDGRPO_TRAINER_DEVICE", "'cpu' or 'cuda'"]),
        (["trainer", "--keep-snapshots", "0"], ["keep_snapshots", "greater than or equal to 1"]),
        (["orchestrator", "--backend", "onnx"], ["backend", "'vllm' or 'transformers'"]),
        (["orchestrator", P, "--model", "tiny-llama", "--federation-port", "0"],
         ["no reward client can reach", "--reward-clients", "--federation-port"]),
        (["orchestrator", P, "--federation-port", "50051"], ["federation_port 50051", "public API's port"]),
        (["orchestrator", "--vllm-kv-cache-gib", "0.5"], ["vllm_kv_cache_gib"]),
        (["orchestrator", P, "--reward-clients", "127.0.0.1:1", "--vllm-tensor-parallel-size", "2"],
         ["vllm_tensor_parallel_size 2", "--backend vllm --device cuda", "--device cpu"]),
        # Transport security: TLS or an explicit plaintext on loopback, nothing in between.
        (["trainer"], ["no transport security", "--tls-cert", "--tls-ca", "make certs", "--plaintext"]),
        (["trainer", P, "--host", "0.0.0.0"], ["plaintext is for development on loopback only", "--tls-cert"]),
        (["orchestrator", P, "--trainer", "10.1.2.3:50052"], ["trainer '10.1.2.3:50052' is not loopback"]),
        (["reward-client", P, "--domains", "add1", "--orchestrator", "example.org:50053"],
         ["orchestrator 'example.org:50053' is not loopback"]),
        (["trainer", "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key", "--tls-ca", "/nonexistent"],
         ["tls_cert", "/nonexistent.crt", "not a readable file"]),
        (["trainer", P, "--tls-ca", "/etc/hostname"], ["choose one"]),
        (["reward-client", P, "--domains", "add1", "--rate-limit", "lots"], ["rate_limit", "100/second"]),
        (["reward-client", P, "--domains", "add1", "--max-message-bytes", "10"], ["max_message_bytes"]),
        *[  # a client with no labelled data can only judge with its own model
            (["reward-client", P, *domains], ["no labelled data", "--labels", "--domains",
                                           "FEDGRPO_REWARD_CLIENT_DOMAINS", "--judge-model",
                                           "FEDGRPO_REWARD_CLIENT_JUDGE_MODEL"])
            for domains in ([], ["--domains", ""], ["--domains", " , "])
        ],
        (["reward-client", "--domains", "[add1"], ["domains", "comma-separated"]),
        (["reward-client", P, "--judge-model", "tiny-policy", "--judge-cache", "/dev/null/judge.sqlite"],
         ["judge_cache", "--judge-cache", "/dev/null/judge.sqlite"]),
        (["reward-client", "--domains", "astrology"], ["invalid configuration", "unknown built-in domain"]),
        (["reward-client", "--domains", "add1", "--port", "0"], ["invalid configuration", "port"]),
        (["reward-client", "--domains", "add1", "--bank-size", "-3"], ["invalid configuration", "bank_size"]),
        (["reward-client", P, "--domains", "add1", "--ground-truth-free"], ["invalid configuration", "judge_model"]),
        (["reward-client", "--domains", "add1", "--judge-max-tokens", "0"],
         ["invalid configuration", "judge_max_tokens"]),
        # A client's own data and checker: what to fix, named.
        (["reward-client", P, "--labels", "/nonexistent/labels.jsonl"],
         ["labels", "--labels / FEDGRPO_REWARD_CLIENT_LABELS", "/nonexistent/labels.jsonl", "no such file"]),
        (["reward-client", P, "--labels", "/etc/hostname"], ["labels", "unknown format", ".jsonl", ".parquet"]),
        (["reward-client", P, "--domains", "add1", "--labels", "/etc/hostname", "--checker", "astrology"],
         ["checker", "--checker / FEDGRPO_REWARD_CLIENT_CHECKER", "unknown checker 'astrology'", "module:function"]),
        (["reward-client", P, "--domains", "add1", "--labels", "/etc/hostname", "--checker", "no_such_module:f"],
         ["checker", "module 'no_such_module' does not import"]),
        (["reward-client", P, "--domains", "add1", "--evaluator-order", "judge"],
         ["evaluator_order leaves out labels", "--evaluator-order"]),
        (["reward-client", P, "--domains", "add1", "--evaluator-order", "labels,oracle"],
         ["evaluator_order", "labels, reward_model, judge"]),
        (["reward-client", P, "--domains", "add1", "--judge-model", "tiny-policy", "--evaluator-order", "labels"],
         ["evaluator_order leaves out judge"]),
    ],
)
def test_bad_configuration_is_refused_with_a_message(args, words):
    proc = start(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def test_environment_variables_configure_services_too():
    proc = subprocess.run(
        [sys.executable, "-m", "fedgrpo.cli", "reward-client", "--domains", "add1"],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "FEDGRPO_REWARD_CLIENT_PORT": "70000"},
    )
    assert proc.returncode != 0 and "FEDGRPO_REWARD_CLIENT_PORT" in proc.stderr


def test_reward_client_domains_are_comma_separated_in_the_environment_too():
    proc = subprocess.run(
        [sys.executable, "-m", "fedgrpo.cli", "reward-client"],
        capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "FEDGRPO_REWARD_CLIENT_DOMAINS": "add1,astrology"},
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "unknown built-in domain(s) ['astrology']" in proc.stderr, proc.stderr


def test_every_command_documents_its_options():
    for command in ["run", "orchestrator", "trainer", "reward-client", "bench", "evaluate", "datasets", "certs"]:
        proc = start(command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "--" in proc.stdout and "usage" in proc.stdout.lower()
