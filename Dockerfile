# The nim-agent connector image: `nim-agent serve` (Flyte connector gRPC on 8000, metrics on 9090).
#
# Build: docker build -t <registry>/nim-agent:<version> .
# Dependencies come from uv.lock only (`uv sync --frozen`), so the image runs exactly the versions
# the tests ran. The build stage holds uv and the sources; the final stage only the virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Same uv as the Makefile (UV_VERSION there).
ARG UV_VERSION=0.13.8
RUN python -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/nim-agent \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# Third-party dependencies first: this layer is reused while only nim_agent/ or README.md change.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
# Then the package itself (README.md is its long description), installed as a wheel (not
# editable): /src is not in the final image.
COPY README.md ./
COPY nim_agent ./nim_agent
RUN uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 1000 nim-agent \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin nim-agent
# The virtualenv's python links to /usr/local/bin/python3 of the same base image.
COPY --from=build /opt/nim-agent /opt/nim-agent
ENV PATH=/opt/nim-agent/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 1000:1000
EXPOSE 8000 9090
ENTRYPOINT ["nim-agent"]
CMD ["serve"]
