# syntax=docker/dockerfile:1
# Multi-stage: a static musl build, then an image holding only the binary and CA roots,
# running as a non-root user.
FROM rust:1.95-slim-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN target="$(uname -m)-unknown-linux-musl" \
 && rustup target add "$target" \
 && cargo build --locked --release --target "$target" \
 && cp "target/$target/release/polars-cloud-auth" /polars-cloud-auth

FROM scratch
LABEL org.opencontainers.image.title="polars-cloud-auth" \
      org.opencontainers.image.description="Short-lived Polars Cloud access tokens for workloads" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /polars-cloud-auth /usr/local/bin/polars-cloud-auth
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 8471 8443
ENTRYPOINT ["/usr/local/bin/polars-cloud-auth"]
CMD ["--help"]
