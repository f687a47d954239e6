# assistants-exporter: a wheel built in one stage, installed with the `azure` extra in a slim one; runs as a
# non-root user with a read-only root filesystem (state on the volume, temporary files in /tmp).
FROM python:3.12-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/assistants-exporter --create-home exporter
# The wheel is bind-mounted from the builder stage, so it never becomes a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --find-links /wheels 'assistants-exporter[azure]'
USER 10001
# Nothing may write outside the volume and /tmp: no bytecode caches, and HOME and XDG_STATE_HOME on the
# volume, so the default state file is /var/lib/assistants-exporter/state.db.
ENV HOME=/var/lib/assistants-exporter \
    XDG_STATE_HOME=/var/lib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/assistants-exporter"]
EXPOSE 9788
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9788/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["assistants-exporter"]
