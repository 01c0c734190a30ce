# The CPU image that Fly Machines run (Fly has offered no GPU Machines since August 2026); GPU hosts use
# Dockerfile.gpu. Build: `fly deploy` (remote builder), or `docker build -t moe-swarm:cpu .`.
#
# Two stages: the first builds a virtual environment, the second copies only that environment into a
# clean slim image, so no compiler, pip cache or source tree ships.

FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The CPU build of torch, pinned and first, so that the package's `torch>=2.3` is already met and pip
# never pulls a multi-GB CUDA build. Every node of a swarm should run the same torch: the state hash
# is computed on CPU in float32 and must agree bit for bit.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY moeswarm ./moeswarm
RUN pip install --no-cache-dir .


FROM python:3.11-slim-bookworm

# A fixed uid/gid so that files on a volume keep their owner across image rebuilds.
RUN groupadd --system --gid 10001 moeswarm \
    && useradd --system --uid 10001 --gid moeswarm --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin moeswarm \
    && mkdir -p /data \
    && chown moeswarm:moeswarm /data

COPY --from=build /opt/venv /opt/venv
COPY deploy/entrypoint.sh /usr/local/bin/moeswarm-entrypoint

# 6PN is IPv6: listen on `::` (which also accepts IPv4 on Linux). The node reads MOESWARM_<OPTION>.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MOESWARM_DATA_DIR=/data \
    MOESWARM_LISTEN_HOST=:: \
    MOESWARM_PEER_PORT=7000 \
    MOESWARM_ADMIN_PORT=7001

VOLUME ["/data"]
WORKDIR /data
# Peer protocol and blobs; admin HTTP (/healthz open, the rest behind the bearer token).
EXPOSE 7000 7001
STOPSIGNAL SIGTERM

# Starts as root only to hand Fly's root-owned volume to `moeswarm`, then runs `moe-swarm node` as that
# user (see deploy/entrypoint.sh). No HEALTHCHECK: Fly runs the [checks] of fly.toml instead.
ENTRYPOINT ["moeswarm-entrypoint"]
