# syntax=docker/dockerfile:1
# The `sidecar` image: one static binary (musl) on an empty base, run as a
# fixed non-root user. Build: docker build -t sidecar:0.1.0 .
# The toolchain crates/sidecar/hot-text.ld was made with: its exact symbol
# names hold hashes that change with the compiler (update both together).
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# musl-tools: the C compiler for mimalloc, the musl build's allocator.
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
COPY . .
RUN cargo build --release --locked --target "$(uname -m)-unknown-linux-musl" \
 && cp "target/$(uname -m)-unknown-linux-musl/release/sidecar" /sidecar

FROM scratch
COPY --from=build /sidecar /sidecar
# 65532 is the conventional "nonroot" user of distroless images.
USER 65532:65532
ENTRYPOINT ["/sidecar"]
CMD ["--help"]
