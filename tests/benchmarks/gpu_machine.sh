#!/usr/bin/env bash
# The GPU benchmark as it ran on the lent GPU machine (DEVELOPERS.md, "GPU machine").
#
#   bash tests/benchmarks/gpu_machine.sh STASH OUT
#
# STASH holds what earlier calls carried over: part0* (onnxruntime-gpu 1.31.1, unpacked and
# xz-compressed, split to fit the per-call limit), wheels/ (spkrec's small pure/abi3 deps) and
# data/{train,val}/<speaker>/ (real speech). OUT receives gpu.json and the logs.
set -euo pipefail
STASH=$1
OUT=$2
export PYTHONUNBUFFERED=1
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

echo "== install: onnxruntime-gpu in place of the image's CPU onnxruntime (never both)"
python3 -m pip uninstall -q -y onnxruntime || true
cat "$STASH"/part0* | xz -d | tar -x -C "$SITE"
# soundfile, soxr, webrtcvad-wheels, sounddevice, pyfiglet, cffi, pycparser; setuptools/wheel to build spkrec.
python3 -m pip install -q --no-index --no-deps --no-compile "$STASH"/wheels/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation .
python3 -c 'import onnxruntime as ort; ort.preload_dlls(); print(ort.__version__, ort.get_available_providers())'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== data"
mkdir -p /tmp/data/train /tmp/data/val
cp -r "$STASH"/data/train/* /tmp/data/train/
cp -r "$STASH"/data/val/* /tmp/data/val/
echo "train speakers: $(ls /tmp/data/train | wc -l), val speakers: $(ls /tmp/data/val | wc -l)"

echo "== benchmark"
python3 tests/benchmarks/gpu_bench.py --data /tmp/data/train --val /tmp/data/val --run /tmp/run \
    --out "$OUT/gpu.json" --steps 600 2>&1 | tee "$OUT/bench.log" || echo "benchmark FAILED"

echo "== torchrun, NCCL, one GPU"
torchrun --standalone --nproc-per-node 1 --no-python spkrec train /tmp/data/val --val /tmp/data/val \
    --out /tmp/ddp --pretrained none --epochs 1 --min-steps 20 2>&1 | tail -5
python3 -c 'import json; print("processes:", json.load(open("/tmp/ddp/metrics.json"))["processes"])'

echo "== provider reported by the daemon"
first=$(ls /tmp/data/val/*/* | head -1)
spkrec-live --model /tmp/run/model.onnx --provider cuda --input "$first" --fast --no-ui --events /tmp/events.jsonl
grep -m1 '"listening"' /tmp/events.jsonl | cut -c1-400
echo "-- with the GPU hidden (CUDA wanted, CPU used):"
CUDA_VISIBLE_DEVICES= spkrec identify "$first" --model /tmp/run/model.onnx --provider cuda > /tmp/hidden.log 2>&1 || true
grep -i -E "warning|spkrec:|falling back" /tmp/hidden.log | cut -c1-300
