# The official OpenTelemetry Collector (contrib) plus one static busybox binary, used only as the
# container's health probe: the official image is built FROM scratch, with no shell, wget or
# curl, so nothing inside it could ask the collector's health_check extension (issue
# open-telemetry/opentelemetry-collector-releases#866). The config is mounted by compose.
FROM busybox:1.37-musl AS probe

FROM otel/opentelemetry-collector-contrib:0.159.0
COPY --from=probe /bin/busybox /usr/local/bin/busybox
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=10 \
    CMD ["/usr/local/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:13133/"]
