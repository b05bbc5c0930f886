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
# The credit toy at the paper's lengths (docs/credit.md): T 256 and 768, k* at 0, T/4, T/2, T-1, the paper's trace
# at lambda 0, 0.9, 0.99, 1, raw and length-neutral, 32 seeds, all as one batched model (<= 8 min; JSON + PNG).
timeout 480 python scripts/credit_toy.py --device cuda --T 256,768 --k-star 0,quarter,mid,last --optimizers adam \
  --seeds 32 --steps 200 --hidden 64 --groups 2 --log-every 25 --out "$out/credit_toy" \
  --arms grpo,paper@0,paper@0.9,paper@0.99,paper@1,mean@0,mean@0.9,mean@0.99,mean@1 \
  | tee "$out/credit_toy.txt" || status=1
exit $status
