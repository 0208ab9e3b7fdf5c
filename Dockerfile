# Build stage: the same `cargo build` as on a developer machine (protoc is vendored by build.rs).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cedar-pdp \
 && strip target/release/cedar-pdp
# (The release profile keeps line tables for profiling on developer machines; the image needs none.)

# Runtime stage: the binary, the example policies, a non-root user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pdp
COPY --from=build /src/target/release/cedar-pdp /usr/local/bin/cedar-pdp
COPY policies /etc/cedar-pdp/policies
# The embedded entity store (unused with --redis-url): mount a volume here to keep provisioned
# entities and their audit trail across container restarts.
RUN mkdir -p /var/lib/cedar-pdp && chown 10001 /var/lib/cedar-pdp
VOLUME /var/lib/cedar-pdp
USER 10001
ENV CEDAR_PDP_LISTEN=0.0.0.0:50051 \
    CEDAR_PDP_HTTP_LISTEN=0.0.0.0:8180 \
    CEDAR_PDP_POLICIES=/etc/cedar-pdp/policies \
    CEDAR_PDP_DATA_DIR=/var/lib/cedar-pdp/data \
    CEDAR_PDP_AUDIT_FILE=/var/lib/cedar-pdp/audit.jsonl \
    CEDAR_PDP_LOG_FORMAT=json
EXPOSE 50051 8180
ENTRYPOINT ["cedar-pdp"]
CMD ["serve"]
