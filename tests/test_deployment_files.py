"""docker-compose.yml validates with the static docker-compose binary (no
Docker engine needed) and describes the deployment the README promises:
mutual TLS everywhere from a one-shot `certs` service, a GPU reserved only
by the GPU profile, a scalable joining reward client; the Dockerfiles expose
every port; the protos are lint-clean."""

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import compose
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = Path(compose.__file__).parent / "docker-compose"
PROFILES = ["gpu", "cpu"]
TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca")


def compose_config(profile: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), "--profile", profile, "config", *args],
        capture_output=True, text=True, timeout=60,
    )


@functools.cache
def services(profile: str) -> dict:
    proc = compose_config(profile, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["services"]


def command_text(service: dict) -> str:
    """The service's command as one string, `$$` (compose's escaped `$`) unescaped."""
    command = service.get("command") or []
    return " ".join(command if isinstance(command, list) else [command]).replace("$$", "$")


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_file_is_valid_for_each_profile(profile):
    proc = compose_config(profile, "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_each_profile_runs_certs_one_backend_and_the_reward_clients():
    assert set(services("gpu")) == {"certs", "trainer-gpu", "orchestrator-gpu", "reward-client"}
    assert set(services("cpu")) == {"certs", "trainer-cpu", "orchestrator-cpu", "reward-client"}
    for profile in PROFILES:
        backend = services(profile)
        assert "trainer" in backend[f"trainer-{profile}"]["networks"]["default"]["aliases"]
        assert "orchestrator" in backend[f"orchestrator-{profile}"]["networks"]["default"]["aliases"]


def reserved_devices(service: dict) -> list:
    return ((service.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices", [])


def test_gpu_services_reserve_a_gpu_and_cpu_ones_do_not():
    for profile in PROFILES:
        for name, service in services(profile).items():
            devices = reserved_devices(service)
            if name.endswith("-gpu"):
                assert devices and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
                assert service["image"] == "fedgrpo:cuda", name
            else:
                assert not devices, f"{name} reserves a GPU but runs on the CPU"
                assert service["image"] == "fedgrpo:cpu", name
    assert services("gpu")["orchestrator-gpu"]["environment"]["FEDGRPO_ORCHESTRATOR_DEVICE"] == "cuda"
    assert services("cpu")["orchestrator-cpu"]["environment"]["FEDGRPO_ORCHESTRATOR_DEVICE"] == "cpu"


def test_reward_client_is_one_scalable_service_that_joins_the_orchestrator():
    for profile in PROFILES:
        client = services(profile)["reward-client"]
        assert "container_name" not in client
        assert not client.get("ports"), "a published host port would stop --scale reward-client=N"
        assert client["deploy"]["replicas"] >= 1
        command = command_text(client)
        assert "--orchestrator orchestrator:50053" in command
        assert 'fedgrpo certs issue "$name" --dir /certs --out /identity' in command
        assert "--host 127.0.0.1" in command
        assert client["environment"]["FEDGRPO_REWARD_CLIENT_DOMAINS"] == "add1,sub1,mul1"


def test_every_service_uses_tls_from_the_certs_volume():
    assert "--plaintext" not in (ROOT / "docker-compose.yml").read_text()
    for profile in PROFILES:
        for name, service in services(profile).items():
            mounts = {(v["source"], v["target"], v.get("read_only", False)) for v in service.get("volumes", [])}
            if name == "certs":
                assert ("certs", "/certs", False) in mounts
                assert "certs init --dir /certs" in command_text(service)
                continue
            assert ("certs", "/certs", True) in mounts, f"{name} does not mount the certs volume read-only"
            assert service["depends_on"]["certs"]["condition"] == "service_completed_successfully", name
            assert "--tls-ca" in command_text(service), name


def test_orchestrator_publishes_api_federation_and_metrics_without_dialed_clients():
    for profile in PROFILES:
        orchestrator = services(profile)[f"orchestrator-{profile}"]
        assert {p["target"] for p in orchestrator["ports"]} == {50051, 50053, 9100}
        # /metrics has no authentication: the host publishes it on loopback only.
        published = {p["target"]: p.get("host_ip", "") for p in orchestrator["ports"]}
        assert published[9100] == "127.0.0.1"
        assert {p.get("host_ip", "") for p in services(profile)[f"trainer-{profile}"]["ports"]} == {"127.0.0.1"}
        command = command_text(orchestrator)
        assert "--metrics-host=0.0.0.0" in command
        for flag in ("--federation-port=50053", "--api-tokens-file=/certs/api-token",
                     "--tls-cert=/certs/orchestrator.crt", "--metrics-port=9100", "--log-format=json"):
            assert flag in command
        assert "--reward-clients" not in command
        assert "--tls-cert=/certs/trainer.crt" in command_text(services(profile)[f"trainer-{profile}"])
        volumes = {v["source"] for v in orchestrator["volumes"]}
        assert "state" in volumes


def test_healthchecks_call_fedgrpo_health_over_tls():
    for profile in PROFILES:
        for name, service in services(profile).items():
            if name == "certs":
                assert "healthcheck" not in service
                continue
            test = " ".join(service["healthcheck"]["test"]).replace("$$", "$")
            assert "fedgrpo health 127.0.0.1:" in test, name
            for flag in TLS_FLAGS:
                assert flag in test, f"{name} healthcheck lacks {flag}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_copy_the_sources_and_expose_every_port(dockerfile):
    text = (ROOT / "docker" / dockerfile).read_text()
    for path in ("pyproject.toml", "Makefile", "README.md", "buf.yaml", "protos", "fedgrpo", "services"):
        assert any(line.startswith("COPY") and path in line.split() for line in text.splitlines()), path
    exposed = {port for line in text.splitlines() if line.startswith("EXPOSE") for port in line.split()[1:]}
    assert exposed == {"50051", "50052", "50053", "50061", "9100"}


@pytest.mark.skipif(not (ROOT / ".cache/buf/node_modules/.bin/buf").exists() and not shutil.which("buf"),
                    reason="buf is installed by `make lint` (npm @bufbuild/buf)")
def test_protos_are_buf_lint_clean():
    buf = shutil.which("buf") or str(ROOT / ".cache/buf/node_modules/.bin/buf")
    proc = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ)
    assert proc.returncode == 0, proc.stdout + proc.stderr
