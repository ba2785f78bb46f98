# Kimball: `docker build -t kimball . && docker run -p 50051:50051 -p 8080:8080 kimball`
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY protos ./protos
COPY kimball_grpc ./kimball_grpc
COPY gateway ./gateway
COPY storage ./storage
# The build compiles protos/ into kimball_grpc/generated (grpcio-tools is a build requirement).
# The data directory exists and is the user's before VOLUME: else Docker creates the volume
# root-owned and the server cannot keep its token, log and snapshots there.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/kimball --create-home kimball \
    && install -d -o kimball -g kimball -m 0700 /var/lib/kimball/data

USER kimball
WORKDIR /var/lib/kimball
ENV GRPC_PORT=50051 API_PORT=8080 KIMBALL_DATA_DIR=/var/lib/kimball/data
EXPOSE 50051 8080
# The write-ahead log, local snapshots and a generated token: keep them on a volume.
VOLUME /var/lib/kimball/data

HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD kimball health --target "127.0.0.1:${GRPC_PORT}"

# An original app.config mounted at /kimball/app.config is read at start-up.
ENTRYPOINT ["kimball"]
CMD ["serve"]
