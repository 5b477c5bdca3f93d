# TinySAM as a Label Studio ML backend: CPU torch; nginx on port 9090 (reads every request whole, then forwards it)
# in front of `tinysam serve` (gunicorn) on 127.0.0.1:9091, both under tini. See docs/deployment.md.
#
#   docker build -t tinysam-backend .                                   # weights come from a volume at run time
#   docker build --build-arg WEIGHTS=tinysam_42.3 -t tinysam-backend .  # or: bake a verified download in
#   docker run -p 9090:9090 -v "$PWD/weights:/weights" \
#       -e LABEL_STUDIO_URL=http://<label-studio host>:8080 -e LABEL_STUDIO_API_KEY=<token> tinysam-backend
#
# Then in Label Studio: Project → Settings → Model → Connect Model, URL http://<this host>:9090, with
# "Interactive preannotations" on. See docs/label_studio.md.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
# The CPU build of torch (the default index serves the multi-GB CUDA build on Linux).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A name from `tinysam weights list` to download (SHA-256 verified) into /weights at build time; empty: none.
ARG WEIGHTS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TINYSAM_CACHE_DIR=/weights \
    TINYSAM_CHECKPOINT=/weights/tinysam_42.3.pth

# Debian's nginx (the buffering front, deploy/nginx.conf) and tini (PID 1: reaps, forwards signals to both processes).
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light tini \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 tinysam \
    && mkdir /weights \
    && chown tinysam /weights

WORKDIR /app
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY weights/manifest.json weights/README.md ./weights/
COPY tinysam_backend ./tinysam_backend
COPY deploy ./deploy
# Editable, so that `tinysam weights` finds weights/manifest.json next to the package.
RUN pip install --no-cache-dir -e ".[labelstudio]"

USER 10001
RUN if [ -n "${WEIGHTS}" ]; then tinysam weights fetch "${WEIGHTS}"; fi

VOLUME ["/weights"]
EXPOSE 9090
# /health answers 200 once this worker's model is loaded (503 while loading or after a failed load).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"]
# Arguments after the image name go to `tinysam serve` (default: 1 worker x 4 threads). For replicas behind the
# nginx of deploy/compose.yaml, run `tinysam serve --host 0.0.0.0 --port 9090` directly (see that file).
ENTRYPOINT ["tini", "-g", "--", "/app/deploy/docker-entrypoint.sh"]
CMD ["--workers", "1", "--threads", "4"]
