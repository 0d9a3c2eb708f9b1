# zarrgate: one static binary on a small runtime image.
#   docker build -t zarrgate:0.1.0 .
# Build stage: the toolchain, and what the bundled HDF5 / netCDF-C builds need.
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends m4 pkg-config python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/cmake && /opt/cmake/bin/pip install --quiet cmake==3.31.6
WORKDIR /src
COPY . .
# HDF5 2.x needs a newer CMake than Debian's; the same pin as python/requirements.txt
RUN CMAKE=/opt/cmake/bin/cmake cargo build --release --locked -p zarrgate \
 && install -D -m 0755 target/release/zarrgate /out/zarrgate \
 && strip /out/zarrgate

# Runtime stage: the binary, CA certificates, and a user of its own.
FROM debian:bookworm-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/zarrgate --create-home zarrgate
COPY --from=build /out/zarrgate /usr/local/bin/zarrgate
USER 10001:10001
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/zarrgate"]
CMD ["serve", "--config", "/etc/zarrgate/zarrgate.toml"]
