"""docker-compose.yml validates with the static docker-compose binary (no
Docker engine needed) and describes the deployment the README promises:
mutual TLS everywhere from a one-shot `certs` service, each container
holding only its own identity (never the CA key, another member's key or,
but for the orchestrator, the API token) and running unprivileged, a GPU
reserved only by the GPU profile, local reward clients that join; the
Dockerfiles expose every port and drop root; the protos are lint-clean and
break nothing main's protos promised."""

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


LOCAL_CLIENTS = {"client-1", "client-2", "client-3"}


def test_each_profile_runs_certs_one_backend_and_the_reward_clients():
    assert set(services("gpu")) == {"certs", "trainer-gpu", "orchestrator-gpu"} | LOCAL_CLIENTS
    assert set(services("cpu")) == {"certs", "trainer-cpu", "orchestrator-cpu"} | LOCAL_CLIENTS
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


def test_local_reward_clients_join_the_orchestrator_under_their_certificate_names():
    for profile in PROFILES:
        for name in LOCAL_CLIENTS:
            client = services(profile)[name]
            assert not client.get("ports"), f"{name}: a reward client opens no port to the host"
            command = command_text(client)
            assert "--orchestrator=orchestrator:50053" in command and "--host=127.0.0.1" in command
            env = client["environment"]
            assert env["FEDGRPO_REWARD_CLIENT_NAME"] == name
            assert (env["FEDGRPO_REWARD_CLIENT_TLS_CERT"], env["FEDGRPO_REWARD_CLIENT_TLS_KEY"]) == (
                f"/identity/{name}.crt", f"/identity/{name}.key")
            assert env["FEDGRPO_REWARD_CLIENT_DOMAINS"] == "add1,sub1,mul1"
            assert "certs issue" not in command, f"{name} signs its own certificate: it would need the CA key"


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (volume, read-only) of a service."""
    return {v["target"]: (v["source"], v.get("read_only", False)) for v in service.get("volumes", [])}


def test_each_container_mounts_only_its_own_identity_read_only():
    """The attack: a compromised reward-client container reads the CA key (mints any identity, the
    orchestrator's included), the trainer's or orchestrator's key (calls the trainer as the
    orchestrator) or the API token. Only `certs` mounts the CA volume; everyone else gets one
    identity volume, its own, read-only."""
    for profile in PROFILES:
        defined = services(profile)
        certs = mounts(defined["certs"])
        assert certs["/certs"] == ("certs", False)
        identity_of = {"orchestrator": f"orchestrator-{profile}", "trainer": f"trainer-{profile}"} | {
            name: name for name in LOCAL_CLIENTS}
        for identity, service in identity_of.items():
            assert certs[f"/identities/{identity}"] == (f"{identity}-identity", False)
            own = mounts(defined[service])
            assert own["/identity"] == (f"{identity}-identity", True), service
            others = {volume for volume, _ in own.values()} - {f"{identity}-identity", "state"}
            assert not others, f"{service} mounts {others}"
            if identity in LOCAL_CLIENTS:
                assert "state" not in {volume for volume, _ in own.values()}, f"{service} mounts the policy state"
        assert "--export /identities --owner 10001:10001" in command_text(defined["certs"])
        assert "--clients client-1,client-2,client-3" in command_text(defined["certs"])


def test_only_the_certs_service_runs_as_root():
    for profile in PROFILES:
        for name, service in services(profile).items():
            assert service.get("user") == ("root" if name == "certs" else None), name


def test_a_container_holding_its_exported_identity_cannot_mint_one(tmp_path):
    """What `certs` puts in each identity volume, made for real: a client's folder has its own key
    and the CA certificate only; minting another identity (the orchestrator's) from it fails."""
    from fedgrpo.cli import main

    main(["certs", "init", "--dir", str(tmp_path / "ca"), "--clients", ",".join(sorted(LOCAL_CLIENTS)),
          "--export", str(tmp_path / "identities")])
    folders = {p.name: sorted(f.name for f in p.iterdir()) for p in (tmp_path / "identities").iterdir()}
    assert folders == {
        "orchestrator": ["api-token", "ca.crt", "orchestrator.crt", "orchestrator.key"],
        "trainer": ["ca.crt", "trainer.crt", "trainer.key"],
    } | {name: ["ca.crt", f"{name}.crt", f"{name}.key"] for name in LOCAL_CLIENTS}
    with pytest.raises(SystemExit, match="run `fedgrpo certs init` first"):
        main(["certs", "issue", "orchestrator", "--dir", str(tmp_path / "identities" / "client-1"),
              "--out", str(tmp_path / "minted")])
    assert not (tmp_path / "minted").exists()


def test_every_service_uses_tls_from_its_identity_volume():
    assert "--plaintext" not in (ROOT / "docker-compose.yml").read_text()
    for profile in PROFILES:
        for name, service in services(profile).items():
            if name == "certs":
                assert "certs init --dir /certs" in command_text(service)
                continue
            assert service["depends_on"]["certs"]["condition"] == "service_completed_successfully", name
            assert "--tls-ca=/identity/ca.crt" in command_text(service), name


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
        for flag in ("--federation-port=50053", "--api-tokens-file=/identity/api-token",
                     "--tls-cert=/identity/orchestrator.crt", "--metrics-port=9100", "--log-format=json"):
            assert flag in command
        assert "--reward-clients" not in command
        assert "--tls-cert=/identity/trainer.crt" in command_text(services(profile)[f"trainer-{profile}"])
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
    for path in ("pyproject.toml", "setup.py", "MANIFEST.in", "Makefile", "README.md", "buf.yaml", "protos", "fedgrpo",
                 "services"):
        assert any(line.startswith("COPY") and path in line.split() for line in text.splitlines()), path
    exposed = {port for line in text.splitlines() if line.startswith("EXPOSE") for port in line.split()[1:]}
    assert exposed == {"50051", "50052", "50053", "50061", "9100"}
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER")]
    assert users == ["fedgrpo"], "the services' image must end as the unprivileged user `fedgrpo`"
    assert "--uid 10001" in text and "chown fedgrpo:fedgrpo /state" in text


BUF = shutil.which("buf") or str(ROOT / ".cache/buf/node_modules/.bin/buf")
needs_buf = pytest.mark.skipif(not Path(BUF).exists(), reason="buf is installed by `make lint` (npm @bufbuild/buf)")


@needs_buf
def test_protos_are_buf_lint_clean():
    proc = subprocess.run([BUF, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def fork_point() -> str | None:
    """Where this checkout left the branch main (`make lint`'s BREAKING_AGAINST); None without git or main."""
    if shutil.which("git") is None:
        return None
    found = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


@needs_buf
@pytest.mark.skipif(fork_point() is None, reason="buf breaking compares with the git branch main: none here")
def test_buf_breaking_passes_here_and_fails_on_a_changed_field_type(tmp_path):
    """`make lint`'s check: these protos against main's pass; the same with one field's type changed fail."""
    against = f"{ROOT / '.git'}#ref={fork_point()},subdir=protos"

    def breaking(where: Path) -> subprocess.CompletedProcess:
        return subprocess.run([BUF, "breaking", "protos", "--against", against], cwd=where, capture_output=True,
                              text=True, timeout=120, env=os.environ)

    unchanged = breaking(ROOT)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    shutil.copy(ROOT / "buf.yaml", tmp_path)
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    common = tmp_path / "protos/fedgrpo/v1/common.proto"
    common.write_text(common.read_text().replace("string weights_path = 3;", "bytes weights_path = 3;", 1))
    changed = breaking(tmp_path)
    assert changed.returncode != 0 and 'changed type from "string" to "bytes"' in changed.stdout, changed.stdout
