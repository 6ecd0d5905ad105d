# ares-gateway image. Multi-stage: dependencies are built in their own layer, cached apart from
# the source; the runtime image holds only the binary, CA roots and the shipped gateway.yaml.
# Not built on the development machine (no Docker engine there): keep it simple.

FROM rust:1-bookworm AS build
WORKDIR /src
# 1. Dependencies only: a stub crate with the real manifest and lock file.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && for b in hot_path redis_limiter; do echo 'fn main() {}' > "benches/$b.rs"; done \
 && cargo build --release --locked \
 && rm -rf src benches
# 2. The gateway itself.
COPY src ./src
COPY benches ./benches
COPY gateway.yaml ./
# The stub's build outputs are older than the real sources; make sure cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ares \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/ares-gateway
COPY --from=build /src/target/release/ares-gateway /usr/local/bin/ares-gateway
COPY --from=build /src/gateway.yaml /etc/ares-gateway/gateway.yaml
# The embedded store (the default) keeps its file here: mount a volume, or everything is lost
# with the container. With ARES_STORE=redis nothing is written here.
ENV ARES_CONFIG=/etc/ares-gateway/gateway.yaml \
    ARES_LISTEN=0.0.0.0:8080 \
    ARES_METRICS_LISTEN=0.0.0.0:9090 \
    ARES_DATA_DIR=/var/lib/ares-gateway
VOLUME ["/var/lib/ares-gateway"]
USER 10001:10001
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ares-gateway"]
CMD ["serve"]
