# notiflow: one image for every role (gateway, stream-worker, retry-worker, migrate, dlq).
#   docker build -t notiflow:dev .
#   docker run --rm -e NOTIFLOW_REDIS_URL=... -e NOTIFLOW_DATABASE_URL=... -p 127.0.0.1:8000:8000 notiflow:dev gateway
# docker-compose.yml runs the whole platform with it.
FROM python:3.11-slim

# The runtime installs from uv.lock into /opt/notiflow (a virtualenv on PATH), by uv pinned as in the Makefile;
# none of the extras: the embedded stores (`dev`), test, load and browser tools stay out of the image.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/notiflow \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    PATH=/opt/notiflow/bin:$PATH

WORKDIR /app
RUN pip install uv==0.13.9
# The dependencies' layer is rebuilt only when the lock (or pyproject.toml) changes, not with the code.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-install-project --no-editable
COPY platform/notiflow ./platform/notiflow
RUN uv sync --locked --no-editable \
 && pip uninstall -y -q uv \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin notiflow \
 && mkdir -p /var/lib/notiflow/secrets && chown notiflow:notiflow /var/lib/notiflow/secrets && chmod 700 /var/lib/notiflow/secrets

USER notiflow
# In a container the gateway listens on every interface; publish the port on the host's loopback only.
ENV NOTIFLOW_HOST=0.0.0.0 \
    NOTIFLOW_PORT=8000
EXPOSE 8000
# `notiflow <role>` handles SIGTERM itself: it stops intake and drains within NOTIFLOW_SHUTDOWN_GRACE_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["notiflow"]
CMD ["gateway"]
