"""Build step: copy proto/ into the package and generate the gRPC stubs into
sidecred_client/_generated, so an installed package needs no protoc at import time."""

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        sys.path.insert(0, str(HERE))
        from sidecred_client import _stubs

        pkg = Path(self.build_lib) / "sidecred_client"
        src = _stubs.proto_dir()
        dst = pkg / "_proto"
        for p in _stubs.PROTOS:
            (dst / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / p, dst / p)
        out = pkg / "_generated"
        shutil.rmtree(out, ignore_errors=True)
        _stubs.generate(dst, out)


setup(cmdclass={"build_py": BuildWithStubs})
