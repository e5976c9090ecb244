# syntax=docker/dockerfile:1
#
# realtime-web: MQTT broker + HTTP bridge in one binary.
#
#   docker build -t realtime-web .
#   docker run --init -p 1883:1883 -p 8080:8080 -v rtw-data:/data realtime-web
#
# TLS listeners (8883 MQTT, 8443 HTTPS) need a certificate mounted into the
# container and configured; certs/ holds development certificates only and is
# deliberately not copied into the image.
# `--init` gives the process a minimal init as PID 1 so signals are handled
# even if the binary does not install its own SIGTERM handler.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------- builder ---
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build
# The whole workspace (see .dockerignore): Cargo.toml, Cargo.lock, src/,
# broker/, bridge/, ... The cache mounts keep the registry and target/ between
# builds (BuildKit); the binary is copied out within the same RUN.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin realtime-web \
 && install -D -m 0755 target/release/realtime-web /out/realtime-web

# ---------------------------------------------------------------- runtime ---
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rtw \
 && useradd --system --uid 10001 --gid rtw --home-dir /data --no-create-home --shell /usr/sbin/nologin rtw \
 && mkdir -p /data \
 && chown rtw:rtw /data \
 && chmod 0750 /data

COPY --from=builder /out/realtime-web /usr/local/bin/realtime-web

ENV RTW_STORAGE__DIR=/data \
    RTW_MQTT__LISTEN=0.0.0.0:1883 \
    RTW_HTTP__LISTEN=0.0.0.0:8080

VOLUME ["/data"]
USER rtw:rtw
WORKDIR /data
# 1883 MQTT, 8883 MQTT over TLS, 8080 HTTP bridge, 8443 HTTPS bridge
EXPOSE 1883 8883 8080 8443
ENTRYPOINT ["/usr/local/bin/realtime-web"]
