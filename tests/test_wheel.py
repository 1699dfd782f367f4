"""The wheel an outside team builds: `pip wheel` of the tracked sources, installed alone in a clean venv.

The generated API (fedgrpo.v1) is never committed: setup.py generates it into
the build. The wheel is built from a copy of the files git tracks (so code
generated in this checkout cannot leak in), both directly and through an
sdist; it must hold fedgrpo/v1 with its type stubs and the descriptor set
reflection serves, the services as real files under fedgrpo/services, and no
top-level `services` package. Installed with --no-deps into a clean venv that
sees this venv's dependencies but not its editable fedgrpo, it imports the
API and its SDK drives a real orchestrator over TLS with a token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.test_client_sdk import SPEC, orchestrator  # noqa: F401  (orchestrator: a module fixture)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
GENERATED = {f"fedgrpo/v1/{name}_pb2{kind}" for name in ("common", "federation", "orchestrator", "policy_trainer",
                                                          "reward_client") for kind in (".py", "_grpc.py", ".pyi")}


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def tracked_copy(dest: Path) -> Path:
    """The files git tracks (or would: untracked, not ignored) as they are in the checkout, symlinks kept."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the checkout
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name, follow_symlinks=False)
    return dest


def build_wheel(source: Path | str, out: Path) -> Path:
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source),
        cwd=out.parent)
    [wheel] = out.glob("fedgrpo-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel built from the tracked files, wheel built from their sdist)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("builds from the files git tracks: needs git and a git checkout")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tracked_copy(tmp / "source")
    direct = build_wheel(source, tmp / "direct")
    run(sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp / 'sdist')!r})",
        cwd=source)
    [sdist] = (tmp / "sdist").glob("fedgrpo-*.tar.gz")
    return direct, build_wheel(sdist, tmp / "from-sdist")


def test_the_wheel_ships_the_generated_api_and_the_services_as_files(wheels):
    listings = [set(zipfile.ZipFile(wheel).namelist()) for wheel in wheels]
    assert listings[0] == listings[1], "the sdist's wheel differs from the tree's"
    names = listings[0]
    assert GENERATED | {"fedgrpo/v1/descriptors.binpb", "fedgrpo/v1/__init__.py"} <= names
    assert {"fedgrpo/services/__init__.py", "fedgrpo/services/orchestrator/server.py",
            "fedgrpo/services/reward_client/server.py", "fedgrpo/services/policy_trainer/server.py"} <= names
    assert {name.split("/")[0] for name in names} == {"fedgrpo", "fedgrpo-0.1.0.dist-info"}, "a top-level package"


# Runs in the clean venv: the installed fedgrpo, its API, and the SDK against the orchestrator.
SDK_SCRIPT = """
import importlib.util, json, sys
import fedgrpo
from fedgrpo import reflection
from fedgrpo.client import Client
from fedgrpo.v1 import orchestrator_pb2

args = json.loads(sys.argv[1])
with Client(args["address"], ca=args["ca"], token=args["token"]) as client:
    before = [r.run_id for r in client.list_runs()]
    run = client.create_run(args["spec"])
    got = client.get_run(run.run_id)
    listed = [r.run_id for r in client.list_runs()]
    client.cancel_run(run.run_id)
print(json.dumps({
    "fedgrpo": fedgrpo.__file__, "api": orchestrator_pb2.__file__,
    "services": importlib.util.find_spec("services") is not None,
    "documented": sorted(reflection.documented_files()),
    "before": before, "created": run.run_id, "got": got.run_id, "steps": got.spec.steps, "listed": listed,
}))
"""


def test_the_installed_wheel_alone_drives_an_orchestrator(wheels, orchestrator, tmp_path):  # noqa: F811
    address, certs = orchestrator
    venv = tmp_path / "venv"
    # Without PYTHONPATH: a checkout on it (its fedgrpo.egg-info) would make pip call fedgrpo installed already.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheels[0]), env=env)
    # This venv's dependencies, by a path line: the .pth files there (the editable fedgrpo's finder) are not run.
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "shared-venv.pth").write_text("".join(f"{path}\n" for path in shared))
    args = {"address": address, "ca": str(certs / "ca.crt"), "token": (certs / "api-token").read_text().strip(),
            "spec": SPEC}
    # cwd outside the checkout: `python -c` puts the working directory on the path.
    proc = run(str(python), "-c", SDK_SCRIPT, json.dumps(args), cwd=tmp_path, env=env)
    seen = json.loads(proc.stdout)
    assert Path(seen["fedgrpo"]).is_relative_to(venv) and Path(seen["api"]).is_relative_to(venv)
    assert not seen["services"], "the wheel installs a top-level `services` package"
    assert "fedgrpo/v1/orchestrator.proto" in seen["documented"]
    assert seen["got"] == seen["created"] and seen["created"] not in seen["before"]
    assert seen["created"] in seen["listed"] and seen["steps"] == SPEC["steps"]
