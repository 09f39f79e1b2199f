# The one `meridian` binary in a small non-root image; the same image runs `meridian controller`
# and `meridian proxy` (see deploy/).
#
#   docker build -t meridian:latest .
#
# Build stage: the toolchain rust-toolchain.toml pins, plus what pingora's build needs (cmake for
# zlib-ng, pkg-config and libssl-dev for OpenSSL; the same list ./dev installs).
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin meridian \
 && install -D -m 0755 target/release/meridian /out/meridian

# Runtime stage: glibc and libgcc only (the binary links nothing else), no shell, no package
# manager, user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/meridian /usr/local/bin/meridian
USER 65532:65532
EXPOSE 80 443 15000 15010 15020
ENTRYPOINT ["/usr/local/bin/meridian"]
CMD ["--help"]
