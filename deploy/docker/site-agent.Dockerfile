# fedsynth site agent: `fedsynth site-agent` = flower-supernode (--isolation process) plus a warm ClientApp
# executor that forks each flwr-clientapp with torch/Opacus/fedsynth already imported (one per hospital).
# Arguments after the image name are flower-supernode options (the entrypoint adds --isolation process).
# The site's table is mounted read-only at /data, its ledger volume at /var/lib/fedsynth, its CA and
# SuperNode key at /certs. Raw rows never leave this container: replies carry weights and scalar metrics only.
# Build from the repository root:  docker build -f deploy/docker/site-agent.Dockerfile -t fedsynth/site-agent .
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
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu /tmp/src \
 && rm -rf /tmp/src \
 && useradd --system --uid 10001 --home-dir /var/lib/fedsynth --shell /usr/sbin/nologin fedsynth \
 && mkdir -p /var/lib/fedsynth/flwr /data \
 && chown -R fedsynth:fedsynth /var/lib/fedsynth

# The default CMD reads the node config from /etc/fedsynth/site.toml: mount the site's own (see
# deploy/site-config.example.toml) with data-path under /data and ledger-path under /var/lib/fedsynth,
# or pass --node-config 'site-id="..." data-path="/data/..." ...' inline as deploy/compose.yml does.
RUN mkdir -p /etc/fedsynth

USER fedsynth
WORKDIR /var/lib/fedsynth
VOLUME ["/var/lib/fedsynth"]
ENTRYPOINT ["fedsynth", "site-agent"]
CMD ["--superlink", "superlink:8000", "--root-certificates", "/certs/ca.crt", \
     "--auth-supernode-private-key", "/certs/auth-key", "--node-config", "/etc/fedsynth/site.toml"]
