# rampart: multi-stage build, small runtime image, non-root user.
#   docker build -t rampart .
#   docker run --rm -p 80:80 -p 8080:8080 -p 9090:9090 \
#     -e RAMPART_ORIGIN_VERIFY_SECRET=... -e RAMPART_ADMIN_HEADER_SECRET=... \
#     -v "$PWD/rules:/etc/rampart/rules:ro" rampart
# The rules are baked in at /etc/rampart/rules; mount a directory there to edit them live.

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rampart --bin rampart \
 && strip target/release/rampart

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin rampart
COPY --from=build /src/target/release/rampart /usr/local/bin/rampart
COPY rules /etc/rampart/rules
USER rampart
# Docker lets unprivileged processes bind ports below 1024 inside a container
# (net.ipv4.ip_unprivileged_port_start=0); elsewhere grant CAP_NET_BIND_SERVICE or use --listen.
EXPOSE 80 8080 9090 9901
ENTRYPOINT ["/usr/local/bin/rampart"]
# The admin listener (metrics, health, reload) leaves loopback only inside the container:
# publish 9901 to the monitoring network, never to the internet.
CMD ["--rules", "/etc/rampart/rules", "--admin", "0.0.0.0:9901"]
