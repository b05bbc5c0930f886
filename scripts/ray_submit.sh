#!/usr/bin/env bash
# Submit a training run to a running Ray cluster (the same entry point as a local run; only cluster= differs).
#   RAY_ADDRESS=http://HEAD_IP:8265 scripts/ray_submit.sh experiment=paper_qwen1.5b model.path=/models/Qwen2.5-1.5B-Instruct
# The repository is uploaded as the job's working dir (.venv, runs/ and wandb/ left out); every node needs the
# same Python environment (`make install EXTRAS=gpu,dev` on GPU nodes, or the image in docker/).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
exec ray job submit --address "$RAY_ADDRESS" --working-dir . \
  --runtime-env-json '{"excludes": [".venv", "runs", "outputs", "wandb", ".git"]}' \
  -- python -m grpo_lambda.train cluster=ray_job "$@"
