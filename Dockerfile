# trr-assets worker image: slim, non-root, the wheel installed, nothing else.
#   docker build -t trr-assets .
#   docker run --env-file trr-assets.env trr-assets                 # the worker
#   docker run --env-file trr-assets.env trr-assets doctor          # any other command
# See docs/deploy.md.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY trr_assets ./trr_assets
COPY sql ./sql
# The project's wheel and those of its dependencies, for an offline install below.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TRR_ASSETS_LOGGING_FORMAT=json \
    TRR_ASSETS_METRICS_HOST=0.0.0.0 \
    TRR_ASSETS_METRICS_PORT=9464
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin trr-assets
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels trr-assets \
    && rm -rf /wheels
USER 10001:10001
WORKDIR /tmp
EXPOSE 9464
# /healthz: 200 while the scheduler runs and the database answers. With
# metrics off (TRR_ASSETS_METRICS_PORT=0) there is nothing to ask: healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('TRR_ASSETS_METRICS_PORT', '0'); sys.exit(0) if port == '0' else urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=4)"]
# SIGTERM: the worker finishes the current batch and exits 0 within 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["trr-assets"]
CMD ["worker"]
