#!/usr/bin/env bash
# Wheels for scripts/gpu_check.py on a GPU machine that cannot reach PyPI (issue 38).
#
# Such a machine's image usually has Python, a CUDA build of torch, numpy, scipy, matplotlib,
# tensorboard, pandas and pytest, but not stable-baselines3, gymnasium or an MPI. This downloads
# them here, at the versions of this checkout's .venv (what the suite tested), as wheels for the
# GPU machine's Python (PY, default 3.12) into .whl/ (ignored by git, about 10 MB). There:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --prefix /tmp/pfx .whl/*.whl &&
#   export PYTHONPATH=$(echo /tmp/pfx/lib/python3*/site-packages) LD_LIBRARY_PATH=/tmp/pfx/lib PATH=/tmp/pfx/bin:$PATH &&
#   python3 scripts/gpu_check.py --out /tmp/gpu-check
#
# (--prefix, not --target: with --target pip drops the MPICH wheel's lib/, and mpi4py finds no libmpi.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
VENV_PY=${VENV_PY:-.venv/bin/python}
version() { "$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pins=()
for dist in stable-baselines3 gymnasium farama-notifications tomli-w mpich mpi4py; do
    pins+=("$dist==$(version "$dist")")
done
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .whl "${pins[@]}"
ls .whl
du -sh .whl
