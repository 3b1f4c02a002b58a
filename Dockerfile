# apnsd container image: supervisord as PID 1 runs `apnsd run` as an unprivileged user.
#
# Build:   docker build -t apnsd .
# Run:     docker run --rm --stop-timeout 40 \
#            -v "$PWD/apnsd.toml:/etc/apnsd/apnsd.toml:ro" \
#            -v "$PWD/secrets:/run/secrets/apnsd:ro" \
#            -e APNSD_REDIS_URL=redis://redis.example:6379/0 \
#            -p 127.0.0.1:9464:9464 apnsd
#          (deploy/docker-compose.yml and deploy/kubernetes/ do the same with Redis.)
#
# Mount points (bind-mount these; no VOLUME instruction, because VOLUME would create
# anonymous volumes on every run and could never be removed in a derived image):
#   /etc/apnsd/apnsd.toml  the config, read-only. An annotated example is in the
#                          image at /etc/apnsd/apnsd.toml.example (token auth:
#                          /etc/apnsd/token-auth.toml.example). Optional: without
#                          it, apnsd is configured from APNSD_* variables alone.
#   /run/secrets/apnsd/    credentials (PEM, .p12, .p8), read-only, readable by uid
#                          10001. Nothing secret is ever baked into this image.
#   /tmp                   the only path written to (supervisor socket and pid file,
#                          worker state dir /tmp/apnsd-10001). A tmpfs/emptyDir there lets
#                          the root filesystem be read-only.
#
# Stopping: SIGTERM goes to supervisord, which passes it to apnsd and waits up to
# stopwaitsecs=30 while apnsd drains (worker.grace_period=20). Docker's default stop
# timeout is 10 s, so give --stop-timeout 40 (compose: stop_grace_period: 40s) or the
# drain is cut short by SIGKILL.

# Pinned to a full patch version so builds are repeatable. Bump it on purpose, and pin
# the digest too (python:3.11.14-slim-bookworm@sha256:...) when the registry is reachable.
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="apnsd" \
      org.opencontainers.image.description="Streams Apple push notifications from a Redis list over one persistent TLS connection per app." \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed uid/gid so that volume permissions and Kubernetes runAsUser match the image.
RUN groupadd --system --gid 10001 apnsd \
 && useradd --system --uid 10001 --gid apnsd --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin apnsd

WORKDIR /build

# Dependencies get their own layer, keyed only on pyproject.toml: a change to the
# source does not reinstall them. The list comes from pyproject.toml itself (build
# requirements plus [project].dependencies), so there is no second list to keep in step.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The package itself. Dependencies and build backend are already installed, so this
# step needs no network (--no-deps, --no-build-isolation).
COPY README.md ./
COPY apnsd/ ./apnsd/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && apnsd --help > /dev/null

COPY deploy/supervisord.conf /etc/apnsd/supervisord.conf
# Only an example: the real config is mounted at /etc/apnsd/apnsd.toml.
COPY config/apnsd.toml /etc/apnsd/apnsd.toml.example
COPY config/token-auth.toml /etc/apnsd/token-auth.toml.example

# APNSD_CONFIG is deliberately not set. apnsd already falls back to
# /etc/apnsd/apnsd.toml when that file exists. Setting the variable would make the
# file mandatory and break env-only runs (-e APNSD_APP_DEFAULT_CERT=... alone).
# Inside a container the metrics endpoint must listen on all interfaces to be
# scraped. Environment variables win over the config file, so change the address
# with -e APNSD_METRICS_LISTEN=..., not metrics.listen.
ENV APNSD_METRICS_LISTEN=0.0.0.0:9464
EXPOSE 9464

WORKDIR /tmp
# Numeric, so that Kubernetes runAsNonRoot can check it; 10001 is the apnsd user above.
USER 10001:10001

# Liveness: asks the daemon's /healthz (on APNSD_METRICS_LISTEN), which is 200 while its
# loops run and iterate. It does not fail when APNs or Redis is down: restarting would fix
# neither and only add connection churn. Readiness (/readyz, or `apnsd health`) is for
# orchestrators that route or roll out on it (see deploy/kubernetes). start-period covers
# startup; supervisord itself exits when apnsd goes FATAL (deploy/supervisord.conf).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["apnsd", "health", "--liveness", "--http"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["supervisord", "-c", "/etc/apnsd/supervisord.conf"]
