"""Build hook: every wheel carries the code generated from protos/, which git never holds.

``build_py`` runs grpc_tools.protoc on ``protos/fedgrpo/v1/*.proto``: for a wheel (``pip install .``,
``pip wheel``, sdist -> wheel) into the build folder, so the wheel ships ``fedgrpo/v1/*_pb2.py``,
``*_pb2_grpc.py``, ``*.pyi`` and ``descriptors.binpb``; for an editable install into the source tree,
as ``make proto`` does. ``descriptors.binpb`` is a FileDescriptorSet with the protos' comments
(``--include_source_info``) and their imports: server reflection answers from it (``fedgrpo.reflection``),
since the generated Python code drops comments. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import glob
import os
from importlib.resources import files

from setuptools import setup
from setuptools.command.build_py import build_py

PROTOS = "protos"
PACKAGE_DIR = os.path.join("fedgrpo", "v1")
# Read by fedgrpo.reflection; `make proto` writes the same file.
DESCRIPTOR_SET = "descriptors.binpb"


def generate(out: str) -> None:
    """Write the Python code, type stubs and descriptor set of protos/fedgrpo/v1 under ``out``."""
    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join(PROTOS, PACKAGE_DIR, "*.proto")))
    if not protos:
        raise SystemExit(f"no {PROTOS}/{PACKAGE_DIR}/*.proto to generate fedgrpo.v1 from: not a fedgrpo source tree")
    os.makedirs(os.path.join(out, PACKAGE_DIR), exist_ok=True)
    args = [
        "grpc_tools.protoc", f"-I{PROTOS}", f"-I{files('grpc_tools') / '_proto'}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
        "--include_imports", "--include_source_info",
        f"--descriptor_set_out={os.path.join(out, PACKAGE_DIR, DESCRIPTOR_SET)}", *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"grpc_tools.protoc failed on {', '.join(protos)}")


class BuildPyWithProtos(build_py):
    """setuptools' build_py, then the generated code of protos/ (into the source tree when editable)."""

    def run(self) -> None:
        super().run()
        generate("." if self.editable_mode else self.build_lib)


setup(cmdclass={"build_py": BuildPyWithProtos})
