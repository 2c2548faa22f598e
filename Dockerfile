# syntax=docker/dockerfile:1
# Build: docker build -t waba-onprem-proxy .
# Run:   docker run -p 8080:8080 waba-onprem-proxy
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# TLS roots are compiled in (webpki-roots), so the runtime needs no CA bundle.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/waba-onprem-proxy /usr/local/bin/waba-onprem-proxy
ENV WABA_PROXY_LISTEN=0.0.0.0:8080 \
    WABA_PROXY_DATA_DIR=/data
EXPOSE 8080
USER nonroot:nonroot
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/waba-onprem-proxy"]
CMD ["serve"]
