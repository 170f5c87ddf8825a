#!/usr/bin/env bash
# Fill .gpu/ (git-ignored) with what scripts/gpu_session.sh needs on a GPU machine that has
# torch but no package index: the data archive, pydantic's wheels for its Python (3.12), the
# airbench source beside ../shared/bench/airbench_peer.py, and optionally an older source tree.
#
#   scripts/gpu_prepare.sh [OLD_REV]     then, on the GPU machine (carry .gpu):
#   DATA=$PWD/.gpu/data/cifar10-jpeg.tar.gz WHEELS=.gpu/whl PEER=$PWD/.gpu/ab [OLD=$PWD/.gpu/old] \
#     bash scripts/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
py=${PYTHON:-.venv/bin/python}  # the checkout's environment: its pydantic versions are the ones to carry
mkdir -p .gpu/whl .gpu/ab .gpu/data
cp "$shared/datasets/cifar10-jpeg.tar.gz" .gpu/data/
# the versions this checkout's pydantic needs, as wheels for CPython 3.12 on x86-64 Linux
versions=$($py -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions)==')
$py -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl $versions
tmp=$(mktemp -d)
$py -m pip download --quiet --no-deps --no-binary=:all: airbench==0.1.8 -d "$tmp"
tar xzf "$tmp"/airbench-0.1.8.tar.gz -C "$tmp"
rm -rf .gpu/ab/airbench && cp -r "$tmp"/airbench-0.1.8/airbench .gpu/ab/ && cp "$shared/bench/airbench_peer.py" .gpu/ab/
if [[ -n "${1:-}" ]]; then
  rm -rf .gpu/old && mkdir -p .gpu/old && git archive "$1" auditflow models | tar -x -C .gpu/old
fi
du -sh .gpu
