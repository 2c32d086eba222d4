# emotion: the gRPC server with the default model, for production.
#
#   docker build -t emotion .
#   docker run --rm -p 50051:50051 -p 9464:9464 emotion
#
# Two stages: the first builds a wheel (needs the project's sources and
# setuptools), the second installs only that wheel and its runtime
# dependencies into a slim image and runs as an unprivileged user.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY emotion ./emotion
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# tini as PID 1: forwards SIGTERM to the server and reaps what its workers leave.
RUN apt-get update \
    && apt-get install --no-install-recommends -y tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# The exact versions CI tested (pyproject.toml declares ranges, for a library).
COPY constraints.txt /wheels/
RUN pip install --no-cache-dir -c /wheels/constraints.txt "$(ls /wheels/emotion-*.whl)[fer]" \
    && rm -rf /wheels
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin emotion
USER 10001

# Listen on every interface inside the container; metrics on their own port.
ENV EMOTION_HOST=0.0.0.0 \
    EMOTION_PORT=50051 \
    EMOTION_METRICS_PORT=9464 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 9464

ENTRYPOINT ["tini", "--", "emotion", "serve"]
