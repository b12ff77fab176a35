# The relay: a long-lived asyncio process on ECS Fargate (template.yaml, RelayTaskDefinition).
#   docker build --platform linux/amd64 -t "$REPOSITORY_URI:$(git rev-parse --short HEAD)" .
# Only the runtime package (layers/core, distribution "hatchway") with its relay extra,
# pinned by constraints.txt (the same pins the tests and the Lambda layers use): no
# emulators, no local stack, no hatchet-sdk, no dev tools.

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt ./
COPY layers/core/pyproject.toml layers/core/
COPY layers/core/hatchway/ layers/core/hatchway/
RUN python -m venv /opt/hatchway \
    && /opt/hatchway/bin/pip install -c constraints.txt './layers/core[relay]' \
    && /opt/hatchway/bin/pip uninstall --yes pip setuptools

FROM python:3.12-slim
RUN groupadd --system --gid 10001 hatchway \
    && useradd --system --uid 10001 --gid hatchway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin hatchway
COPY --from=build /opt/hatchway /opt/hatchway
ENV PATH=/opt/hatchway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The task's root file system is read-only; /tmp is a task volume.
WORKDIR /tmp
USER 10001:10001
# ECS stops a task with SIGTERM, then SIGKILL after stopTimeout (120 s): the relay
# hands its runs over on SIGTERM. Exec form, so Python (not a shell) receives it.
STOPSIGNAL SIGTERM
CMD ["hatchway-relay"]
