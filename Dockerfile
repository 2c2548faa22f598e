# syntax=docker/dockerfile:1
# Build: docker build -t waba-onprem-proxy .
# Run:   docker run -p 8080:8080 -v waba-data:/data waba-onprem-proxy
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. The stubs stand in for every target
# Cargo.toml names (the bench is declared explicitly, so it must exist).
COPY Cargo.toml Cargo.lock ./
# Build settings (mimalloc's lazy arena commit): part of the dependency build.
COPY .cargo ./.cargo
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/translate.rs \
    && cargo build --release --locked --bin waba-onprem-proxy \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin waba-onprem-proxy \
    && mkdir /empty-data

# TLS roots are compiled in (webpki-roots) and SQLite is bundled: the runtime needs only libc.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/waba-onprem-proxy /usr/local/bin/waba-onprem-proxy
# distroless has no shell to mkdir: an empty directory owned by the runtime user, so a fresh
# named volume mounted here is writable.
COPY --from=build --chown=nonroot:nonroot /empty-data /data
ENV WABA_PROXY_LISTEN=0.0.0.0:8080 \
    WABA_PROXY_DATA_DIR=/data
# The outbox and stored settings live here: mount a volume so they survive the container.
VOLUME ["/data"]
EXPOSE 8080
USER nonroot:nonroot
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/waba-onprem-proxy"]
CMD ["serve"]
