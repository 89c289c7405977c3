# vLLM's CPU build for the local sandbox (gptoss_sandbox.images): the cached engine venv of
# gptoss_sandbox.engine_venv, relocated to /opt/vllm onto a Debian python3.11 base.
# The build context is the venv folder itself:
#   buildah bud -f images/vllm-cpu.Dockerfile --build-arg PYTHON_IMAGE=<base> \
#     --build-arg VENV_ORIGIN=<venv folder> -t localhost/gptoss-sandbox/vllm-cpu:<version> <venv folder>
# The base must hold python3.11 (the venv's wheels are cp311) and libnuma1 (vLLM's CPU kernels).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE}
# Where the venv was installed: its scripts' shebangs and activate files name that folder.
ARG VENV_ORIGIN
COPY . /opt/vllm
# Point the venv at this image's interpreter and rewrite the old folder in its scripts.
# vLLM's CLI (`vllm serve`, `vllm --version`) reads the version of a distribution named vllm,
# which vllm-cpu is not: name one, with the version vLLM itself derives for it (<v>+cpu).
# Only small files change, so this layer stays small.
RUN set -eu; \
    test -n "${VENV_ORIGIN}"; \
    python="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"; \
    version="$(python3 -c 'import platform; print(platform.python_version())')"; \
    ln -sfn "${python}" /opt/vllm/bin/python3.11; \
    ln -sfn python3.11 /opt/vllm/bin/python3; \
    ln -sfn python3.11 /opt/vllm/bin/python; \
    printf 'home = %s\ninclude-system-site-packages = false\nversion = %s\n' \
        "$(dirname "${python}")" "${version}" > /opt/vllm/pyvenv.cfg; \
    find /opt/vllm/bin -maxdepth 1 -type f -exec grep -qIF "${VENV_ORIGIN}" {} \; \
        -exec sed -i "s|${VENV_ORIGIN}|/opt/vllm|g" {} \; ; \
    find /opt/vllm \( ! -perm -a+r -o -type d ! -perm -a+x \) -exec chmod a+rX {} +; \
    site="$(/opt/vllm/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"; \
    if ! /opt/vllm/bin/python -c 'import importlib.metadata as m; m.version("vllm")' 2>/dev/null; then \
        cpu="$(/opt/vllm/bin/python -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')+cpu"; \
        mkdir "${site}/vllm-${cpu}.dist-info"; \
        printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\n' "${cpu}" > "${site}/vllm-${cpu}.dist-info/METADATA"; \
    fi; \
    groupadd --gid 10001 vllm; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin vllm; \
    /opt/vllm/bin/python -c 'import sys; assert sys.prefix == "/opt/vllm", sys.prefix'
# HOME and the caches are on /tmp, the pod's writable emptyDir (the root is read-only).
ENV PATH=/opt/vllm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    VLLM_TARGET_DEVICE=cpu \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 10001:10001
WORKDIR /tmp
CMD ["vllm", "--help"]
