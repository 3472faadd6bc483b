# fedsynth auditor and download service: `fedsynth audit` (run on demand) and `fedsynth serve` (default).
# Mount the ServerApp's output folder (artifacts) at /srv/fedsynth, the download-service certificate at /certs
# and the token file at /etc/fedsynth/tokens.
# Build from the repository root:  docker build -f deploy/docker/auditor.Dockerfile -t fedsynth/auditor .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg HOME=/var/lib/fedsynth

COPY pyproject.toml README.md /tmp/src/
COPY fedsynth /tmp/src/fedsynth
COPY common /tmp/src/common
COPY client /tmp/src/client
COPY server /tmp/src/server
COPY audit /tmp/src/audit
COPY cli /tmp/src/cli
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu /tmp/src \
 && rm -rf /tmp/src \
 && useradd --system --uid 10001 --home-dir /var/lib/fedsynth --shell /usr/sbin/nologin fedsynth \
 && mkdir -p /var/lib/fedsynth /srv/fedsynth /etc/fedsynth \
 && chown -R fedsynth:fedsynth /var/lib/fedsynth /srv/fedsynth

USER fedsynth
WORKDIR /var/lib/fedsynth
EXPOSE 8443
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["python", "-c", "import ssl,sys,urllib.request as u; c=ssl.create_default_context(cafile='/certs/ca.crt'); c.check_hostname=False; sys.exit(u.urlopen('https://127.0.0.1:8443/healthz', context=c, timeout=4).status != 200)"]
ENTRYPOINT ["fedsynth"]
CMD ["serve", "--artifacts", "/srv/fedsynth/artifacts", "--host", "0.0.0.0", "--port", "8443", \
     "--token-file", "/etc/fedsynth/tokens", "--certfile", "/certs/server.pem", "--keyfile", "/certs/server.key"]
