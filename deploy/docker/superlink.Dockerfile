# fedsynth SuperLink: flower-superlink plus the installed fedsynth ServerApp (run by the SuperLink's own
# SuperExec in a subprocess, so fedsynth must be importable here).
# Build from the repository root:  docker build -f deploy/docker/superlink.Dockerfile -t fedsynth/superlink .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_HOME=/var/lib/fedsynth/flwr

COPY pyproject.toml README.md /tmp/src/
COPY fedsynth /tmp/src/fedsynth
COPY common /tmp/src/common
COPY client /tmp/src/client
COPY server /tmp/src/server
COPY audit /tmp/src/audit
COPY cli /tmp/src/cli
# CPU-only torch: the server only averages weights.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu /tmp/src \
 && rm -rf /tmp/src \
 && useradd --system --uid 10001 --home-dir /var/lib/fedsynth --shell /usr/sbin/nologin fedsynth \
 && mkdir -p /var/lib/fedsynth/flwr /srv/fedsynth \
 && chown -R fedsynth:fedsynth /var/lib/fedsynth /srv/fedsynth

# The generic Flower app (one pyproject.toml pointing at the installed fedsynth components) for `flwr run`.
COPY deploy/flwr-app /opt/fedsynth/flwr-app

USER fedsynth
WORKDIR /var/lib/fedsynth
VOLUME ["/var/lib/fedsynth", "/srv/fedsynth"]
# One HTTP(S) port for the Fleet, Control and Runtime APIs (Flower 1.42).
EXPOSE 8000
ENTRYPOINT ["flower-superlink"]
CMD ["--host", "0.0.0.0", "--port", "8000", \
     "--ssl-ca-certfile", "/certs/ca.crt", "--ssl-certfile", "/certs/server.pem", "--ssl-keyfile", "/certs/server.key", \
     "--enable-supernode-auth", "--database", "/var/lib/fedsynth/superlink.db", \
     "--disable-runtime-dependency-installation"]
