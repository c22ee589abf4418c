# Multi-stage build: compile with the Rust image, run on a slim base as a non-root user.
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
EXPOSE 6432 9127
ENTRYPOINT ["/usr/local/bin/pooler"]
