# Multi-stage build: compile with the Rust image, run on a slim base as a non-root user.
#   docker build -t pooler .
#   docker run -v $PWD/deploy:/etc/pooler:ro -p 6432:6432 -p 9127:9127 pooler
# The config is read from /etc/pooler/pooler.toml (POOLER_CONFIG); its auth_file, if
# relative, from the same directory. Any key can be overridden from the environment:
# POOLER_<KEY>=value (e.g. POOLER_DEFAULT_POOL_SIZE=30), see `pooler --help`.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# make: jemalloc (the allocator, a C library) is built with it.
RUN apt-get update && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: for server_tls_sslmode = verify-* against a public CA. No curl: the
# HEALTHCHECK is the binary itself.
RUN groupadd --system --gid 10001 pooler \
 && useradd --system --uid 10001 --gid 10001 --no-create-home pooler \
 && apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pooler /usr/local/bin/pooler
# Mount the config (and the auth file it names) here.
ENV POOLER_CONFIG=/etc/pooler/pooler.toml
# Numeric, so Kubernetes can check runAsNonRoot without looking the name up.
USER 10001:10001
# 6432: clients (listen_port); 9127: /metrics, /healthz, /readyz (metrics_port).
EXPOSE 6432 9127
# SIGTERM starts a graceful drain (shutdown_timeout); give `docker stop -t` at least that.
STOPSIGNAL SIGTERM
# `pooler --health-check` reads the same config (POOLER_CONFIG and POOLER_* overrides) and
# asks the running pooler GET /healthz on its metrics_port (200 while the process serves), or
# connects to listen_port when metrics_port = 0; exit 0 or 1. metrics_addr may stay
# 127.0.0.1: the check runs inside the container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/pooler", "--health-check"]
ENTRYPOINT ["/usr/local/bin/pooler"]
