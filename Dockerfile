# Multi-stage build: compile with the Rust image, run on a slim base as a non-root user.
#   docker build -t pooler .
#   docker run -v $PWD/deploy:/etc/pooler:ro -p 6432:6432 -p 9127:9127 pooler
# The config is read from /etc/pooler/pooler.toml (POOLER_CONFIG); its auth_file, if
# relative, from the same directory. Any key can be overridden from the environment:
# POOLER_<KEY>=value (e.g. POOLER_DEFAULT_POOL_SIZE=30), see `pooler --help`.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home pooler \
 && apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pooler /usr/local/bin/pooler
# Mount the config (and the auth file it names) here.
ENV POOLER_CONFIG=/etc/pooler/pooler.toml
USER pooler
# 6432: clients (listen_port); 9127: /metrics, /healthz, /readyz (metrics_port).
EXPOSE 6432 9127
# SIGTERM starts a graceful drain (shutdown_timeout); give `docker stop -t` at least that.
STOPSIGNAL SIGTERM
# /healthz answers 200 while the process serves (metrics_port must stay 9127 for this check,
# and metrics_addr may stay 127.0.0.1: the check runs inside the container).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9127/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/pooler"]
