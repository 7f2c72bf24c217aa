# syntax=docker/dockerfile:1
# Small runtime image: a release binary on Debian slim (no PostgreSQL inside: point
# DATABASE_URL at yours; TLS to it is rustls, so the image needs no OpenSSL). It runs as
# uid 10001, `serve` by default, listening on 0.0.0.0:8080.
#
#   docker build -t jobcast .
#   docker run --rm -e DATABASE_URL=... jobcast migrate     # once per release, before serve/work
#   # serve on a non-loopback address needs API keys (else it exits 2, naming
#   # --api-keys-file and --insecure-no-auth); keys file readable by uid 10001:
#   printf 'default %s\n' "$(openssl rand -hex 32)" > api-keys && chmod 0644 api-keys
#   docker run -e DATABASE_URL=... -e JOBCAST_TOKEN_SECRET="$(openssl rand -hex 32)" \
#     -v "$PWD/api-keys:/etc/jobcast/api-keys:ro" -e JOBCAST_API_KEYS_FILE=/etc/jobcast/api-keys \
#     --health-cmd "jobcast health" -p 8080:8080 jobcast serve
#   docker run -e DATABASE_URL=... my-image work --no-demo-handlers --exec 'report.build=build-report'
#     (my-image: FROM this one, plus your handlers; docs/exec.md)
# No HEALTHCHECK here: it would also apply to `work`, which has no HTTP port. Give `serve`
# one where it runs (`--health-cmd "jobcast health"`, compose's `healthcheck:`, a
# Kubernetes probe). Every `serve` behind one balancer needs the same
# JOBCAST_TOKEN_SECRET. deploy/compose.yaml runs the whole set (PostgreSQL, migrate,
# 2 serve behind nginx, 2 work); docs/deploy.md explains it.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: built against placeholder sources, so a
# change to src/ rebuilds only jobcast itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/jobcast.rs \
 && cargo build --release --locked --bin jobcast \
 && rm -rf src benches
COPY build.rs ./
COPY src src
COPY migrations migrations
COPY sql sql
# /client.js and /client.d.ts are embedded from here (include_str!).
COPY clients/js clients/js
COPY examples examples
COPY benches benches
# Newer than the placeholders whatever the context's timestamps: cargo rebuilds jobcast.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin jobcast \
 && strip target/release/jobcast

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 jobcast
COPY --from=build /src/target/release/jobcast /usr/local/bin/jobcast
USER jobcast
ENV JOBCAST_LISTEN=0.0.0.0:8080
# No default JOBCAST_API_KEYS_FILE: a default path that is not mounted stops `serve` (exit 2).
# Set it to where you mount the keys file (compose: /run/secrets/jobcast_api_keys).
EXPOSE 8080
ENTRYPOINT ["jobcast"]
CMD ["serve"]
