# assistants-exporter: non-root, state on a volume, health-checked.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# The azure extra: Entra ID tokens (azure-identity) for Azure AI Foundry.
RUN pip install --no-cache-dir --prefix=/install ".[azure]"

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/assistants-exporter --create-home exporter
COPY --from=build /install /usr/local
USER 10001
ENV ASSISTANTS_EXPORTER_STATE_FILE=/var/lib/assistants-exporter/state.db \
    ASSISTANTS_EXPORTER_LISTEN=0.0.0.0:9788 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/assistants-exporter"]
EXPOSE 9788
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9788/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["assistants-exporter"]
