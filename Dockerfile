# The Headrace image: one image runs the operator (`headrace-operator`) and the
# workers (`python3 -m headrace.run mod:flow`). User code goes in an image of
# the user's own, `FROM headrace:<version>` (see docs/kubernetes.md).
#
#   docker build -t headrace:0.1.0 .
#   buildah bud --build-arg BASE_IMAGE=localhost/debian-python -t headrace:0.1.0 .
#
# The base only needs `python3 -m pip` and a POSIX shell: no venv module, no
# useradd, no compiler. Nothing is fetched at build time except PyPI packages.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Extras of the project to install: `operator` is needed for the operator;
# add `kafka` or `otel` for those connectors (e.g. "operator,kafka").
ARG HEADRACE_EXTRAS=operator
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . /src
# --target installs into a plain directory, which works on any Python (a
# Debian system Python refuses other installs as "externally managed") and
# gives a tree that the next stage copies as a whole.
RUN python3 -m pip install --no-compile --target /opt/headrace/site ".[${HEADRACE_EXTRAS}]" \
 && python3 -m compileall -q /opt/headrace/site \
 && rm -rf /src

FROM ${BASE_IMAGE}
ARG HEADRACE_UID=10001
# /app is where a `FROM headrace` image puts its dataflows; it is on the
# import path, so `flow: myflows.orders:flow` finds /app/myflows/orders.py.
# HOME and the temp dir point at /tmp, the only writable place a pod with a
# read-only root filesystem needs (an emptyDir mounted there).
ENV PYTHONPATH=/app:/opt/headrace/site \
    PATH=/opt/headrace/site/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    TMPDIR=/tmp
COPY --from=build /opt/headrace/site /opt/headrace/site
# A named, non-root user without useradd (a minimal base may not have it);
# Kubernetes' runAsNonRoot needs the numeric USER below.
# `python` too, not only `python3`: Debian's python3 package has no `python`.
RUN echo "headrace:x:${HEADRACE_UID}:${HEADRACE_UID}:headrace:/tmp:/sbin/nologin" >> /etc/passwd \
 && echo "headrace:x:${HEADRACE_UID}:" >> /etc/group \
 && mkdir -p /opt/headrace/site/bin \
 && if ! command -v python >/dev/null 2>&1; then \
      ln -s "$(command -v python3)" /opt/headrace/site/bin/python; fi \
 && mkdir -p /app \
 && python3 -c "import headrace.run, headrace_operator"
WORKDIR /app
USER ${HEADRACE_UID}:${HEADRACE_UID}
EXPOSE 3030 8080
CMD ["python3", "-m", "headrace.run", "--help"]
