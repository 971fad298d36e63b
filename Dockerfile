# spooky-trio in a container: docs/install.md ("Docker").
#
#   docker build -t spooky-trio .
#   docker run -d --name spooky -p 443:9889/udp -p 443:9889/tcp \
#     -v /etc/spooky:/etc/spooky:ro spooky-trio
#
# The image runs as the unprivileged user `spooky` (uid 10001) and listens on unprivileged ports
# (publish them on 443 with -p); its health check asks the control API's health path, so
# the config must enable observability.control_api (loopback, port 9902 by default, or set
# SPOOKY_HEALTH_URL).

FROM python:3.11-slim-bookworm AS build
# only what the package needs: the wheel build reads pyproject.toml, README.md and src/
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN python -m venv /opt/spooky-trio \
    && /opt/spooky-trio/bin/pip install --no-cache-dir /src

FROM python:3.11-slim-bookworm
# a fixed numeric id: orchestrators can check "not root" (runAsNonRoot) without /etc/passwd
RUN groupadd --system --gid 10001 spooky \
    && useradd --system --uid 10001 --gid spooky --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin spooky
COPY --from=build /opt/spooky-trio /opt/spooky-trio
ENV PATH=/opt/spooky-trio/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SPOOKY_HEALTH_URL=http://127.0.0.1:9902/health
USER 10001:10001
# HTTP/3 on UDP and HTTP/1.1 + HTTP/2 on TCP, same port (listen.port, 9889 by default);
# the metrics endpoint and control API (observability.*) stay on loopback unless configured
EXPOSE 9889/udp 9889/tcp
# the control API's health path (liveness); the image has no curl, Python asks
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SPOOKY_HEALTH_URL'], timeout=2)"]
# SIGTERM drains (performance.shutdown_drain_timeout_ms); give `docker stop -t` more than that
STOPSIGNAL SIGTERM
ENTRYPOINT ["spooky-trio"]
CMD ["run", "--config", "/etc/spooky/config.yaml"]
