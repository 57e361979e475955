# checkout-service: `docker build -t checkout-service .`, then run with the
# variables of `checkout serve --help` (DATABASE_URL, JWT_SECRET, ... from your
# secret store). The image runs `checkout serve` as an unprivileged user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin checkout \
    && install -m 0755 target/release/checkout /usr/local/bin/checkout

FROM debian:bookworm-slim
# ca-certificates: TLS to Stripe and PostgreSQL; curl: the HEALTHCHECK.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/checkout --create-home checkout
COPY --from=build /usr/local/bin/checkout /usr/local/bin/checkout
USER 10001
WORKDIR /var/lib/checkout
ENV HOST=0.0.0.0 \
    PORT=3000
EXPOSE 3000
# A stop is a drain: readiness fails at once, requests in flight finish
# (SHUTDOWN_DRAIN_DELAY_MS + SHUTDOWN_TIMEOUT_MS; give `docker stop -t` at least that).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:3000/health/live"]
ENTRYPOINT ["/usr/local/bin/checkout"]
CMD ["serve"]
