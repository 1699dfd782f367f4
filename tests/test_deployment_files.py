"""docker-compose.yml validates with the static docker-compose binary (no
Docker engine needed), and the protos are lint-clean."""

import os
import shutil
import subprocess
from pathlib import Path

import compose
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = Path(compose.__file__).parent / "docker-compose"


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_compose_file_is_valid_for_each_profile(profile):
    proc = subprocess.run(
        [str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), "--profile", profile, "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_gpu_profile_reserves_a_gpu_and_cpu_profile_does_not():
    def services(profile):
        proc = subprocess.run(
            [str(COMPOSE), "-f", str(ROOT / "docker-compose.yml"), "--profile", profile, "config", "--format", "json"],
            capture_output=True, text=True, timeout=60, check=True,
        )
        import json

        return json.loads(proc.stdout)["services"]

    gpu = services("gpu")
    assert gpu["trainer-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["orchestrator-gpu"]["environment"]["FEDGRPO_ORCHESTRATOR_DEVICE"] == "cuda"
    cpu = services("cpu")
    assert "deploy" not in cpu["trainer-cpu"]
    assert cpu["orchestrator-cpu"]["environment"]["FEDGRPO_ORCHESTRATOR_DEVICE"] == "cpu"


@pytest.mark.skipif(not (ROOT / ".cache/buf/node_modules/.bin/buf").exists() and not shutil.which("buf"),
                    reason="buf is installed by `make lint` (npm @bufbuild/buf)")
def test_protos_are_buf_lint_clean():
    buf = shutil.which("buf") or str(ROOT / ".cache/buf/node_modules/.bin/buf")
    proc = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ)
    assert proc.returncode == 0, proc.stdout + proc.stderr
