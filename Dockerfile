# syntax=docker/dockerfile:1
# A small image for pgwarden as a sidecar or shared proxy.
#
#   docker build -t pgwarden .
#   docker run -p 6432:6432 -e PGWARDEN_UPSTREAM=postgres://app:secret@db:5432 pgwarden
#   docker run -v ./my.toml:/etc/pgwarden/pgwarden.toml pgwarden --config /etc/pgwarden/pgwarden.toml
#
# Every setting is a flag or a PGWARDEN_* variable (see `pgwarden --help`); the example files
# of config/ are in /etc/pgwarden/. The image listens on 0.0.0.0:6432 (PGWARDEN_LISTEN), and
# SIGTERM (docker stop) drains clients before exiting: give it a --stop-timeout longer
# than shutdown_timeout.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgwarden \
    && objcopy --strip-debug target/release/pgwarden /usr/local/bin/pgwarden

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --user-group --no-create-home --shell /usr/sbin/nologin pgwarden
COPY --from=build /usr/local/bin/pgwarden /usr/local/bin/pgwarden
COPY config/ /etc/pgwarden/
USER pgwarden
ENV PGWARDEN_LISTEN=0.0.0.0:6432
EXPOSE 6432
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgwarden"]
# Settings come from PGWARDEN_* variables (or flags appended to `docker run`).
CMD []
