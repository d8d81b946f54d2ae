"""The package's build step puts generated stubs (and the protos) into the wheel, so an
installed package imports without protoc; the source tree itself carries no stubs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]


def test_wheel_carries_generated_stubs(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path / "src"
    shutil.copytree(PKG, src, ignore=shutil.ignore_patterns("tests", "examples", "build",
                                                            "*.egg-info", "__pycache__"))
    build_env = dict(os.environ, SIDECRED_PROTO_DIR=str(PKG.parents[1] / "proto"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, timeout=120,
                   cwd=tmp_path, capture_output=True, env=build_env)
    [wheel] = (tmp_path / "dist").glob("sidecred_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for m in ("broker_pb2.py", "broker_pb2_grpc.py", "admin_pb2.pyi", "__init__.py"):
        assert f"sidecred_client/_generated/{m}" in names, names
    assert "sidecred_client/py.typed" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site), SIDECRED_PROTO_DIR="/nonexistent",
               SIDECRED_STUB_CACHE="/nonexistent/cache")
    code = ("import sidecred_client as s, sys; from sidecred_client import _stubs; "
            "print(_stubs._locate()); s._core.pb.broker_pb2.GetSecretRequest(name='x')")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert out.strip().endswith("sidecred_client/_generated"), out
    # Build output stays out of the source tree.
    tracked = subprocess.run(["git", "-C", str(PKG), "ls-files", "sidecred_client"],
                             capture_output=True, text=True).stdout
    assert "_generated" not in tracked and "_pb2" not in tracked
