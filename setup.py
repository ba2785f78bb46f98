"""Build hook: generate the gRPC/protobuf code from protos/ before packaging."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).parent / "protos"))


class BuildWithProtos(build_py):
    def run(self) -> None:
        from compile_protos import generate  # protos/compile_protos.py

        generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
