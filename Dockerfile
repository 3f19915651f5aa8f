# orderly: a multi-stage build (docs/deploying.md, "Container").
#   buildah bud --isolation chroot --pull=never --format docker -t orderly:dev .   (or docker build -t orderly .)
#   docker run --rm --network host -e DATABASE_URL=postgres://orderly_daemon:…@db:5432/orderly \
#       --stop-timeout 60 orderly:dev
# Configuration comes from the environment: DATABASE_URL and ORDERLY__SECTION__KEY variables
# (or a file mounted at /etc/orderly/orderly.toml and ORDERLY_CONFIG pointing at it).
# `--format docker` keeps the HEALTHCHECK (the OCI image format has no such field).

ARG RUST_VERSION=1.95

# --- build -------------------------------------------------------------------------------
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# 1. The dependencies alone, against a dummy crate with the real manifest and lock file: this
#    layer (most of the build time) is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src migrations config \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs config/default.toml \
 && cargo build --release --locked \
 && rm -rf src migrations config \
    target/release/orderly target/release/deps/orderly-* target/release/deps/liborderly-* \
    target/release/.fingerprint/orderly-*

# 2. orderly itself.
COPY migrations migrations
COPY config config
COPY src src
RUN cargo build --release --locked \
 && strip --strip-debug target/release/orderly \
 && ./target/release/orderly --version

# --- runtime -----------------------------------------------------------------------------
FROM docker.io/library/debian:bookworm-slim

# A fixed non-root uid/gid, so that runtimes can check runAsNonRoot and volumes can be owned.
RUN echo 'orderly:x:10001:10001:orderly:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'orderly:x:10001:' >> /etc/group \
 && mkdir -p /etc/orderly

COPY --from=build /src/target/release/orderly /usr/local/bin/orderly

# JSON logs for the runtime's log driver; everything else has its built-in default
# (config/default.toml) until set with ORDERLY__SECTION__KEY. DATABASE_URL has no default
# worth using in a container: pass it (a secret) at run time.
ENV ORDERLY__LOG__FORMAT=json

USER 10001:10001
# SIGTERM drains within worker.shutdown_grace (30s) plus at most 15s: give the container
# at least 60s to stop (`docker stop -t 60`, `--stop-timeout 60`, Kubernetes
# terminationGracePeriodSeconds: 60), or lower ORDERLY__WORKER__SHUTDOWN_GRACE.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/orderly", "health", "--timeout", "5s"]
ENTRYPOINT ["/usr/local/bin/orderly"]
CMD ["run"]
