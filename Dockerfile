# assistants-exporter in a venv, installed with the `azure` extra; runs as a non-root user with a read-only root
# filesystem (state on the volume, temporary files in /tmp).
#   docker build -t assistants-exporter .
# Without a registry or PyPI (README, "Docker"): a base image you have and wheels in the build context:
#   docker build --build-arg BASE=my-python:3.11 --build-arg WHEELS=wheels -t assistants-exporter .
# Any image with python3 (3.11 or later), its venv module and useradd will do as BASE.
ARG BASE=python:3.12-slim

FROM ${BASE} AS builder
# WHEELS: a directory of the build context holding the exporter's wheel and its dependencies'; pip then
# installs from it alone (--no-index). Empty: the exporter is built from this source tree, its
# dependencies come from PyPI.
ARG WHEELS=
COPY . /src
RUN python3 -m venv /opt/assistants-exporter \
    && if [ -n "$WHEELS" ]; then \
        /opt/assistants-exporter/bin/pip install --no-cache-dir --no-index --find-links "/src/$WHEELS" \
            'assistants-exporter[azure]'; \
    else \
        /opt/assistants-exporter/bin/pip install --no-cache-dir '/src[azure]'; \
    fi

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/assistants-exporter --create-home exporter
# Only the venv: neither the source tree nor the wheels become a layer of this image. The venv's interpreter
# is the base's, which is why both stages start from the same BASE.
COPY --from=builder /opt/assistants-exporter /opt/assistants-exporter
USER 10001
# Nothing may write outside the volume and /tmp: no bytecode caches, and HOME and XDG_STATE_HOME on the
# volume, so the default state file is /var/lib/assistants-exporter/state.db.
ENV PATH=/opt/assistants-exporter/bin:$PATH \
    HOME=/var/lib/assistants-exporter \
    XDG_STATE_HOME=/var/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ASSISTANTS_EXPORTER_PROBE_LISTEN_ADDRESS=127.0.0.1:9789
VOLUME ["/var/lib/assistants-exporter"]
EXPOSE 9788
# The probe-only listener (plain HTTP, /healthz and /readyz only, on loopback): the check keeps working when a
# web config turns on TLS, client certificates or basic auth on 9788 (docs/web-config.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9789/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["assistants-exporter"]
