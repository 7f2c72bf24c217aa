# Small runtime image: a static-ish release binary on Debian slim (no PostgreSQL inside:
# point DATABASE_URL at yours, or use `jobcast dev` outside a container).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY sql sql
COPY examples examples
COPY benches benches
RUN cargo build --release --locked --bin jobcast && strip target/release/jobcast

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 jobcast
COPY --from=build /src/target/release/jobcast /usr/local/bin/jobcast
USER jobcast
ENV JOBCAST_LISTEN=0.0.0.0:8080
# Keyed by default (docs/security.md): mount the keys file here and pass JOBCAST_TOKEN_SECRET.
ENV JOBCAST_API_KEYS_FILE=/run/secrets/jobcast-keys
EXPOSE 8080
ENTRYPOINT ["jobcast"]
CMD ["serve"]
