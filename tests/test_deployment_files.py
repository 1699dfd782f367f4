"""docker-compose.yml validates with the static docker-compose binary (no
Docker engine needed) and describes the deployment the README promises:
mutual TLS everywhere from a one-shot `certs` service, each container
holding only its own identity (never the CA key, another member's key or,
but for the orchestrator, the API token) and running unprivileged, a GPU
reserved only by the GPU profile, which differs from the CPU profile only in
image, device, dtype and the engine's memory setting; reward clients that join:
self-signing replicas only in the `dev` profile, an operator-issued identity
in the `partner` profile. The Dockerfiles take their base image and a CA
bundle from the build, expose every port and drop root; the protos are
lint-clean and break nothing main's protos promised. (`make compose-smoke`
runs the file for real: tests/compose_smoke.py.)"""

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


def compose_config(*profiles: str, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    chosen = [arg for profile in profiles for arg in ("--profile", profile)]
    return subprocess.run(
        [str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), *chosen, "config", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PARTNER_IDENTITY_DIR": "/srv/org-a"},
    )


@functools.cache
def services(*profiles: str) -> dict:
    proc = compose_config(*profiles, args=("--format", "json"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["services"]


def every_service(profile: str) -> dict:
    """The profile's services with the development replicas and the partner client."""
    return services(profile, "dev", "partner")


def entrypoint_text(service: dict) -> str:
    return " ".join(service.get("entrypoint") or []).replace("$$", "$")


def command_text(service: dict) -> str:
    """The service's command as one string, `$$` (compose's escaped `$`) unescaped."""
    command = service.get("command") or []
    return " ".join(command if isinstance(command, list) else [command]).replace("$$", "$")


@pytest.mark.parametrize("profiles", [("gpu",), ("cpu",), ("gpu", "dev", "partner"), ("cpu", "dev", "partner")])
def test_compose_file_is_valid_for_each_profile(profiles):
    proc = compose_config(*profiles, args=("--quiet",))
    assert proc.returncode == 0, proc.stderr


LOCAL_CLIENTS = {"client-1", "client-2", "client-3"}
DEV = {"dev-ca", "reward-client"}


def test_each_profile_runs_certs_and_one_backend_and_clients_only_when_asked():
    for profile in PROFILES:
        backend = {"certs", f"trainer-{profile}", f"orchestrator-{profile}"}
        assert set(services(profile)) == backend
        assert set(services(profile, "dev")) == backend | DEV
        assert set(services(profile, "partner")) == backend | {"partner-client"}
    for profile in PROFILES:
        backend = services(profile)
        assert "trainer" in backend[f"trainer-{profile}"]["networks"]["default"]["aliases"]
        assert "orchestrator" in backend[f"orchestrator-{profile}"]["networks"]["default"]["aliases"]


def reserved_devices(service: dict) -> list:
    return ((service.get("deploy") or {}).get("resources") or {}).get("reservations", {}).get("devices", [])


def test_gpu_services_reserve_a_gpu_and_cpu_ones_do_not():
    for profile in PROFILES:
        for name, service in every_service(profile).items():
            devices = reserved_devices(service)
            if name.endswith("-gpu"):
                assert devices and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"], name
                assert service["image"] == "fedgrpo:cuda", name
            else:
                assert not devices, f"{name} reserves a GPU but runs on the CPU"
                assert service["image"] == "fedgrpo:cpu", name
    assert services("gpu")["orchestrator-gpu"]["environment"]["FEDGRPO_ORCHESTRATOR_DEVICE"] == "cuda"
    assert services("cpu")["orchestrator-cpu"]["environment"]["FEDGRPO_ORCHESTRATOR_DEVICE"] == "cpu"


def test_the_gpu_profile_is_the_cpu_profile_but_for_image_device_dtype_and_engine_memory():
    """What runs here (CPU) is what a GPU host runs: only the image, the GPU reservation, device, dtype
    and vLLM's memory setting (a share of GPU memory vs a KV-cache size) may differ."""
    device_only = {"image", "build", "deploy"}
    for role in ("trainer", "orchestrator"):
        gpu, cpu = services("gpu")[f"{role}-gpu"], services("cpu")[f"{role}-cpu"]
        assert {k: v for k, v in gpu.items() if k not in device_only | {"environment", "profiles", "depends_on"}} == {
            k: v for k, v in cpu.items() if k not in device_only | {"environment", "profiles", "depends_on"}}, role
        prefix = f"FEDGRPO_{role.upper()}_"
        differ = {k for k in gpu["environment"].keys() | cpu["environment"].keys()
                  if gpu["environment"].get(k) != cpu["environment"].get(k)}
        assert differ <= {prefix + "DEVICE", prefix + "DTYPE", prefix + "VLLM_GPU_MEMORY_UTILIZATION",
                          prefix + "VLLM_KV_CACHE_GIB"}, differ
        assert (gpu["environment"][prefix + "DEVICE"], cpu["environment"][prefix + "DEVICE"]) == ("cuda", "cpu")
        assert (gpu["environment"][prefix + "DTYPE"], cpu["environment"][prefix + "DTYPE"]) == ("bfloat16", "float32")
    assert {k: v for k, v in services("gpu")["orchestrator-gpu"]["depends_on"].items() if k != "trainer-gpu"} == {
        k: v for k, v in services("cpu")["orchestrator-cpu"]["depends_on"].items() if k != "trainer-cpu"}


def test_reward_clients_join_the_orchestrator_and_open_no_port():
    for profile in PROFILES:
        for name in ("reward-client", "partner-client"):
            client = every_service(profile)[name]
            assert not client.get("ports"), f"{name}: a reward client opens no port to the host"
            command = command_text(client)
            assert "--host=127.0.0.1" in command and "--port=50061" in command, name
            assert client["environment"]["FEDGRPO_REWARD_CLIENT_ORCHESTRATOR"] == "orchestrator:50053", name
            assert client["environment"]["FEDGRPO_REWARD_CLIENT_DOMAINS"] == "add1,sub1,mul1"


def test_development_replicas_sign_their_own_identity_and_only_in_the_dev_profile():
    """`--scale reward-client=N` works because each replica signs client-<container id> with the
    development CA's key; that key is a development convenience, so the replicas and the service that
    hands them the key exist only in the `dev` profile."""
    for profile in PROFILES:
        replica = every_service(profile)["reward-client"]
        assert replica["profiles"] == ["dev"] and every_service(profile)["dev-ca"]["profiles"] == ["dev"]
        assert replica["deploy"]["replicas"] == 3
        script = entrypoint_text(replica)
        assert 'name="client-$(hostname)"' in script
        assert 'certs issue "$name" --dir /dev-ca --out /tmp/identity' in script
        assert '--name "$name" --tls-cert "/tmp/identity/$name.crt"' in script
        assert "--tls-ca /tmp/identity/ca.crt" in script


def test_a_partner_client_runs_with_the_identity_its_operator_issued():
    for profile in PROFILES:
        partner = every_service(profile)["partner-client"]
        assert partner["profiles"] == ["partner"]
        assert not partner.get("entrypoint") and "certs issue" not in command_text(partner)
        env = partner["environment"]
        assert (env["FEDGRPO_REWARD_CLIENT_NAME"], env["FEDGRPO_REWARD_CLIENT_TLS_CERT"],
                env["FEDGRPO_REWARD_CLIENT_TLS_KEY"], env["FEDGRPO_REWARD_CLIENT_TLS_CA"]) == (
            "org-a", "/identity/org-a.crt", "/identity/org-a.key", "/identity/ca.crt")
        assert [(v["type"], v["source"], v["target"], v.get("read_only")) for v in partner["volumes"]] == [
            ("bind", "/srv/org-a", "/identity", True)]


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (volume, read-only) of a service."""
    return {v["target"]: (v["source"], v.get("read_only", False)) for v in service.get("volumes", [])}


def test_each_container_mounts_only_its_own_identity_read_only():
    """The attack: a compromised reward-client container reads the CA key (mints any identity, the
    orchestrator's included), the trainer's or orchestrator's key (calls the trainer as the
    orchestrator) or the API token. Only `certs` mounts the CA volume writable, and only the dev
    profile's `dev-ca` reads it; everyone else gets one identity, its own, read-only; the CA key
    reaches the `dev-ca` volume, and the self-signing replicas, only in the dev profile."""
    for profile in PROFILES:
        for defined in (services(profile), every_service(profile)):
            certs = mounts(defined["certs"])
            assert certs["/certs"] == ("certs", False)
            assert "ca.key" not in command_text(defined["certs"])
            for identity in ("orchestrator", "trainer"):
                assert certs[f"/identities/{identity}"] == (f"{identity}-identity", False)
                own = mounts(defined[f"{identity}-{profile}"])
                assert own["/identity"] == (f"{identity}-identity", True), identity
                assert {volume for volume, _ in own.values()} == {f"{identity}-identity", "state"}, identity
            assert "--export /identities --owner 10001:10001" in command_text(defined["certs"])
            holders = {name for name, service in defined.items() for volume, _ in mounts(service).values()
                       if volume in ("certs", "dev-ca")}
            assert holders == ({"certs", "dev-ca", "reward-client"} if "dev-ca" in defined else {"certs"})
        dev = every_service(profile)
        assert mounts(dev["dev-ca"]) == {"/certs": ("certs", True), "/dev-ca": ("dev-ca", False)}
        assert mounts(dev["reward-client"]) == {"/dev-ca": ("dev-ca", True)}
        for name in ("reward-client", "partner-client"):
            assert "state" not in {volume for volume, _ in mounts(dev[name]).values()}, f"{name} mounts the state"


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
        for name, service in every_service(profile).items():
            if name == "certs":
                assert "certs init --dir /certs" in command_text(service)
                continue
            after = "dev-ca" if name == "reward-client" else "certs"
            if name != "partner-client":  # it may run on another machine, where no `certs` runs
                assert service["depends_on"][after]["condition"] == "service_completed_successfully", name
            if name in ("trainer-" + profile, "orchestrator-" + profile):
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
        for name, service in every_service(profile).items():
            if name in ("certs", "dev-ca"):
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
    # Third-party packages in a layer before the code: a code change must not reinstall torch and vLLM.
    lines = text.splitlines()
    deps = next(i for i, line in enumerate(lines) if "make deps" in line)
    copied_before = [p for line in lines[:deps] if line.startswith("COPY") for p in line.split()[1:-1]]
    assert copied_before == ["pyproject.toml", "Makefile"], copied_before
    assert deps < next(i for i, line in enumerate(lines) if "make install" in line)
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER")]
    assert users == ["fedgrpo"], "the services' image must end as the unprivileged user `fedgrpo`"
    assert "--uid 10001" in text and "chown fedgrpo:fedgrpo /state" in text


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_take_the_base_image_and_a_ca_bundle_from_the_build(dockerfile):
    """Users keep the default base; a machine with no registry (or a TLS proxy) passes its own base
    image, CA bundle (a build secret: never in a layer) and wheels, as `make compose-smoke` does."""
    lines = (ROOT / "docker" / dockerfile).read_text().splitlines()
    default = "python:3.11-slim" if dockerfile == "Dockerfile.cpu" else "nvidia/cuda:12.8.1-runtime-ubuntu24.04"
    assert lines[[line.startswith("FROM") for line in lines].index(True) - 1] == f"ARG BASE_IMAGE={default}"
    assert "FROM ${BASE_IMAGE}" in lines
    install = next(line for line in lines if "--mount=type=secret" in line)
    assert "--mount=type=secret,id=ca-certificates" in install
    assert "--mount=type=bind,source=docker/wheels,target=/wheels" in install
    text = "\n".join(lines)
    assert "PIP_CERT=/run/secrets/ca-certificates" in text and "PIP_FIND_LINKS=/wheels" in text
    assert "EXTRAS=" in text and "prepare-model tiny-policy" in text
    assert "g++" in text, "vLLM compiles kernels with torch inductor at run time: the image needs a C++ compiler"


def test_orchestrators_give_vllm_shared_memory():
    """vLLM's engine and workers exchange tensors through /dev/shm; Docker's default 64 MB fails at start."""
    for profile in PROFILES:
        assert int(services(profile)[f"orchestrator-{profile}"]["shm_size"]) >= 1 << 30
    assert (ROOT / "docker" / "wheels" / ".gitignore").is_file()


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
