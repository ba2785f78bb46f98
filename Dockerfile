# syntax=docker/dockerfile:1
# Kimball: docker build -t kimball . && docker run -p 8080:8080 -p 50051:50051 kimball
# (docs/operations.md#docker). tests/system/test_wheel_install.py runs this file's install
# command, entrypoint and health check against a fresh virtual environment.

# The builder makes wheels, Kimball's and every dependency's; only those reach the image.
FROM python:3.11-slim AS builder
# A C compiler for Kimball's two C modules (kimball_grpc/core/_bloombits.c and
# kimball_grpc/codec/_event_reader.c; the image has Python's headers): the wheel carries
# them built, so the runtime stage needs no compiler.
# The compiler is whichever Debian ships for the base image: nothing of it reaches the image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies come from pyproject.toml alone, so this layer is built again when it
# changes, not at every change of the source: the build tools go into this stage's Python,
# the dependencies into /wheels.
COPY pyproject.toml ./
RUN python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb')); \
print(*project['build-system']['requires'], sep='\n', file=open('build-requires.txt', 'w')); \
extras = project['project']['optional-dependencies']; \
print(*project['project']['dependencies'], *extras['kubernetes'], *extras['cluster'], \
sep='\n', file=open('requirements.txt', 'w'))" \
    && pip install --no-cache-dir --requirement build-requires.txt build==1.6.1 \
    && pip wheel --no-cache-dir --wheel-dir /wheels --requirement requirements.txt
COPY setup.py MANIFEST.in README.md ./
COPY protos ./protos
COPY kimball_grpc ./kimball_grpc
COPY gateway ./gateway
COPY storage ./storage
# The sdist first, then the wheel from it (generating kimball_grpc/generated), as
# `python -m build` does anywhere; the build tools are the ones installed above.
RUN python -m build --no-isolation --outdir /dist . && cp /dist/kimball-*.whl /wheels/

# The image: Python and the installed wheels (Kimball's built for this platform); no
# compiler, no source, no wheel files. With the kubernetes extra (the feature spec store
# in a ConfigMap, as the original kept them) and the cluster extra (cluster mode's NATS
# client, for deploy/kubernetes/overlays/cluster).
FROM python:3.11-slim
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "$(echo /wheels/kimball-*.whl)[kubernetes,cluster]"
# The data directory exists and is the user's before VOLUME: else Docker creates the volume
# root-owned and the server cannot keep its token, log and snapshots there.
RUN groupadd --system --gid 10001 kimball \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/kimball --create-home kimball \
    && install -d -o kimball -g kimball -m 0700 /var/lib/kimball/data
# By number, so Kubernetes' runAsNonRoot can tell the user is not root.
USER 10001:10001
WORKDIR /var/lib/kimball
ENV GRPC_PORT=50051 API_PORT=8080 KIMBALL_DATA_DIR=/var/lib/kimball/data
EXPOSE 8080 50051
# The write-ahead log, local snapshots and a generated token: keep them on a volume.
VOLUME /var/lib/kimball/data

# Healthy only when both sides answer on IPv4 loopback: gRPC health SERVING and REST
# /ready 200 (each is NOT_SERVING or 503 while the state is restored). A shell reads the
# ports from the environment, so the check follows `-e GRPC_PORT=... -e API_PORT=...`.
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "exec kimball health --timeout 2 --target 127.0.0.1:${GRPC_PORT} --http http://127.0.0.1:${API_PORT}/ready"]

# kimball runs as PID 1, no init in between (exec form, no shell): `docker stop` sends
# SIGTERM straight to it, and it handles SIGTERM and SIGINT itself (finish the calls in
# flight, take a last snapshot, exit 0). PID 1 gets no default signal actions, but Kimball
# installs its own handlers; it starts no child processes, so none are left to reap.
# An original app.config mounted at /kimball/app.config is read at start-up.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kimball"]
CMD ["serve"]
