#!/usr/bin/env bash
# The one prepared run for a lent GPU machine (CUDA torch + transformers, no vLLM/Ray, no network), from the
# repository root of a copy of this checkout. Writes JSON lines and the bench table to $OUT (or ./device_out).
#   bash scripts/device_run.sh
# DeepSpeed is not on that image: wheels placed in .whl/ beforehand travel with the checkout and are installed
# here (`pip download deepspeed==0.19.8 hjson ninja py-cpuinfo msgpack nvidia-ml-py einops -d .whl --no-deps`);
# without them the learner check reports itself skipped.
set -uo pipefail
out="${OUT:-device_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*" >/dev/null; then
  python -m pip install -q --no-index --no-deps --no-build-isolation .whl/* >"$out/pip.log" 2>&1 ||
    echo "wheel install failed: see $out/pip.log"
fi
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
status=0
python scripts/device_check.py --device cuda | tee "$out/device_check.jsonl" || status=1
python scripts/bench_trace.py --device cuda --dtype bfloat16 --batch 64 --lengths 3072 --cumsum \
  | tee "$out/bench_trace_h200.txt" || status=1
exit $status
