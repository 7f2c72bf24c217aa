# syntax=docker/dockerfile:1
# Small runtime image: a release binary on Debian slim (no PostgreSQL inside: point
# DATABASE_URL at yours; TLS to it is rustls, so the image needs no OpenSSL).
#
#   docker build -t jobcast .
#   docker run --rm -e DATABASE_URL=... jobcast migrate     # once per release, before serve/work
#   docker run -e DATABASE_URL=... -p 8080:8080 jobcast serve
#   docker run -e DATABASE_URL=... jobcast work
# deploy/compose.yaml runs the whole set (PostgreSQL, migrate, 2 serve behind nginx, 2 work).
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
COPY src src
COPY migrations migrations
COPY sql sql
# /client.js is embedded from here (include_str!).
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
# Keyed by default (docs/security.md): mount the keys file here and pass JOBCAST_TOKEN_SECRET.
ENV JOBCAST_API_KEYS_FILE=/run/secrets/jobcast-keys
EXPOSE 8080
# For `serve` (and `dev`); a `work` container has no HTTP port: turn it off there
# (compose: `healthcheck: {disable: true}`).
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s --retries=3 CMD ["jobcast", "health"]
ENTRYPOINT ["jobcast"]
CMD ["serve"]
