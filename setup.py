"""Build hook: generate the gRPC/protobuf code from protos/, then package it with the rest.

setuptools fixes a project's package list when it reads the configuration, before any
command runs; from a fresh checkout or an sdist that list cannot hold
``kimball_grpc.generated``, which only the build creates, and a wheel built from it fails
at start with ``ModuleNotFoundError``. So ``build_py`` generates the code first and then
finds the packages again.

Two modules are C (``kimball_grpc/core/_bloombits.c``: the Bloom filters' bit positions,
tested and set in place; ``kimball_grpc/codec/_event_reader.c``: the events of a
serialized ``TrackEventsRequest``): built here from source with the C compiler and Python
headers, so the wheel is platform-specific and installs without a compiler (README: why C).
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent / "protos"))

# The import packages the distribution ships (found, so new subpackages need no entry here).
PACKAGES = ["kimball_grpc", "kimball_grpc.*", "gateway", "gateway.*", "storage", "storage.*"]


class BuildWithProtos(build_py):
    """``build_py`` that compiles protos/ into kimball_grpc/generated before packaging.

    It runs for wheels and for editable installs alike (an editable install leaves the
    code in the checkout); an sdist ships protos/ and the compiler script instead of the
    code, so every wheel holds code generated for its own grpcio-tools and protobuf.
    """

    def run(self) -> None:
        from compile_protos import generate  # protos/compile_protos.py

        generate()
        self.packages = self.distribution.packages = find_packages(include=PACKAGES)
        # build_py works out each package's data files (the generated .pyi stubs among
        # them) from self.packages, lazily: forget an answer computed from the old list.
        self.__dict__.pop("data_files", None)
        super().run()


BLOOM_BITS = Extension(
    "kimball_grpc.core._bloombits",
    sources=["kimball_grpc/core/_bloombits.c"],
    extra_compile_args=["-O2", "-std=c11"],
)

EVENT_READER = Extension(
    "kimball_grpc.codec._event_reader",
    sources=["kimball_grpc/codec/_event_reader.c"],
    extra_compile_args=["-O2", "-std=c11"],
)

setup(
    packages=find_packages(include=PACKAGES),
    ext_modules=[BLOOM_BITS, EVENT_READER],
    cmdclass={"build_py": BuildWithProtos},
)
