#!/usr/bin/env bash
# Submit a training run to a running Ray cluster (the same entry point as a local run; only cluster= differs).
#   RAY_ADDRESS=http://HEAD_IP:8265 scripts/ray_submit.sh experiment=paper_qwen1.5b_math12k model.path=/models/Qwen2.5-1.5B-Instruct
# The repository is uploaded as the job's working dir (.venv, runs/ and wandb/ left out); every node needs the
# same Python environment (`make install EXTRAS=gpu,lora,dev` on GPU nodes, or docker/Dockerfile.gpu).
# Run folders: the job runs in a temporary copy of the repository, so unless the arguments set trainer.output_dir
# they go to this checkout's runs/ folder (an absolute path: use one every node can write, e.g. on a shared disk).
# Ray token authentication (on by default for clusters started by `ray start` since Ray 2.59): the token is found
# as Ray looks for it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); this script turns the client's
# token mode on when one exists (harmless against a cluster without authentication).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
export RAY_ADDRESS
if [[ -z "${RAY_AUTH_MODE:-}" ]] &&
  [[ -n "${RAY_AUTH_TOKEN:-}" || -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; then
  export RAY_AUTH_MODE=token
fi
args=("$@")
if [[ " ${args[*]-} " != *" trainer.output_dir="* ]]; then
  args+=("trainer.output_dir=$PWD/runs")
fi
exec ray job submit --working-dir . \
  --runtime-env-json '{"excludes": [".venv", "runs", "outputs", "wandb", ".git"]}' \
  -- python -m grpo_lambda.train cluster=ray_job "${args[@]}"
