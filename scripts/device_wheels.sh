#!/usr/bin/env bash
# Fetch, on a machine with pip access, the wheels a CUDA machine's Python 3.12 lacks to run cgnet
# (it already has CUDA torch, Lightning, torchmetrics, OpenCV, onnxruntime, rich, matplotlib):
# they land in .whl/ (git-ignored) and scripts/gpu_checks.sh installs them there. Versions are
# the ones the CPU test suite runs with.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: -d .whl \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    hydra-core==1.3.8 omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24 \
    simsimd==6.5.16 stringzilla==5.3.2 pydantic==2.14.4 pydantic-core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5 cityscapesscripts==2.3.0 \
    litdata==0.2.76 boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
# antlr4's runtime (omegaconf's parser) is published as a source archive only: build its wheel here.
python3 -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
# The authors' CamVid weights (the copy the tests use): the GPU figures (bf16 drift above all) mean
# more with trained weights than with a random initialisation.
cp tests/fixtures/reference/cgnet_official_camvid_m3n21.pth .whl/
ls -1 .whl
