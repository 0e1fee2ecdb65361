# CPU image of vla-rl: the same install as `make` (torch==2.13.0 first, then -e ./sim -e .[dev,ray]).
#   docker compose --profile vla-rl up       # make train, outputs in ./outputs
#   docker compose --profile vla-rl-dev up   # JupyterLab on 127.0.0.1:8888 (token in the log)
# The GPU variant (profile vla-rl-gpu in compose.yaml) builds this file with
# TORCH_INDEX_URL pointing at a CUDA wheel index.
FROM python:3.11-slim-bookworm

# make runs the Makefile; EGL + Mesa's llvmpipe let MuJoCo render without a display or GPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# Where torch==2.13.0 comes from: the CPU wheels (a bare PyPI torch is a multi-GB CUDA build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV MUJOCO_GL=egl HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
WORKDIR /app

# The Makefile's first steps on their own layer, so a code change does not re-download torch.
COPY Makefile pyproject.toml ./
RUN python3 -m venv .venv
RUN .venv/bin/python -m pip install -q --upgrade pip
RUN PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} .venv/bin/python -m pip install -q torch==2.13.0

# The rest of `make venv`: pip install -e ./sim -e '.[dev,ray]' and the Jupyter kernel, then the stamp.
COPY . .
RUN PIP_EXTRA_INDEX_URL=${TORCH_INDEX_URL} make venv

CMD ["make", "train"]
