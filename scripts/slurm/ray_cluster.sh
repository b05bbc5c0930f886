#!/usr/bin/env bash
# A Ray cluster on a SLURM allocation, for as long as one entry point runs: the shared part of
# scripts/slurm/train.sbatch and scripts/slurm/evaluate.sbatch (docs/launch.md).
#
#   source ray_cluster.sh; ray_cluster_main grpo_lambda.train "$@"     # in a batch script
#   bash ray_cluster.sh node head|worker [HEAD_IP:PORT]               # one node's Ray (the batch script runs it)
#
# ray_cluster_main starts the Ray head on the batch script's node (the allocation's first), a Ray worker on every
# other node (`srun --overlap`, one step per node), waits for the head, then runs
#   python -m MODULE cluster=ray_job cluster.address=HEAD_IP:PORT cluster.num_nodes=$SLURM_JOB_NUM_NODES ARGS...
# on the head node (the trainer waits until that many Ray nodes are alive, `cluster.join_timeout_s`). It stops this
# job's Ray, and only this job's, when the entry point ends and when the job is cancelled: SIGTERM to its own
# `ray start --block` processes (which end their node's Ray processes) and steps, then SIGKILL after
# GRPO_LAMBDA_STOP_TIMEOUT_S. It never runs `ray stop` (which ends every Ray on the machine).
#
# Parameters (environment variables; default in brackets):
#   GRPO_LAMBDA_DIR             the repository, on a disk every node sees [$SLURM_SUBMIT_DIR]
#   GRPO_LAMBDA_VENV            virtual environment put first on PATH; "none": PATH as it is
#                               [$GRPO_LAMBDA_DIR/.venv; none with a container image]
#   GRPO_LAMBDA_RAY_PORT        the head's GCS port; the three after it serve Ray's client server, dashboard and
#                               dashboard agent [20000 + 4 * (SLURM_JOB_ID mod 3000): jobs sharing a node differ]
#   GRPO_LAMBDA_RAY_TMPDIR      Ray's --temp-dir on the head; workers use it with "-w" appended. Per job, so this
#                               job's Ray record stays out of /tmp/ray; removed when the node's Ray stops. Keep it
#                               short: Ray's Unix sockets live under it (paths < 107 characters) [/tmp/ray-$SLURM_JOB_ID]
#   GRPO_LAMBDA_RAY_KEEP_TMPDIR 1: keep the temp dirs (Ray's logs) [0]
#   GRPO_LAMBDA_RAY_HEAD_IP     the head's address, as the other nodes reach it [the source address of the head
#                               node's default route, as Ray picks it]
#   GRPO_LAMBDA_RAY_CPUS        Ray's CPUs on each node [$SLURM_CPUS_ON_NODE, the node's allocated CPUs]
#   GRPO_LAMBDA_RAY_GPUS        Ray's GPUs on each node [$SLURM_GPUS_ON_NODE, 0 without]
#   GRPO_LAMBDA_RAY_HEAD_ARGS, GRPO_LAMBDA_RAY_WORKER_ARGS  more `ray start` arguments for the head / the workers,
#                               split at spaces, e.g. '--resources={"rollout_node":1}' (no spaces inside) [none]
#   GRPO_LAMBDA_RAY_DASHBOARD   1: Ray's dashboard on the head's 127.0.0.1 (port GRPO_LAMBDA_RAY_PORT + 2) [0]
#   GRPO_LAMBDA_RAY_START_TIMEOUT_S  how long to wait for the head to come up [300]
#   GRPO_LAMBDA_STOP_TIMEOUT_S  how long stopping waits, for the entry point and then for Ray, before SIGKILL; keep
#                               it under the cluster's KillWait (30 s by default) [20]
#   GRPO_LAMBDA_CONTAINER_IMAGE run Ray and the entry point in this image (e.g. one built from docker/) [none]
#   GRPO_LAMBDA_CONTAINER_RUNTIME  pyxis (srun --container-image; every process then runs in a step) or
#                               apptainer (apptainer exec) [pyxis when srun has --container-image, else apptainer]
#   GRPO_LAMBDA_CONTAINER_ARGS  more arguments: srun's for pyxis (e.g. --container-mounts=/data:/data), `apptainer
#                               exec`'s for apptainer (e.g. "--bind /data") [none; the repository and the temp dir's
#                               folder are mounted, and apptainer gets --nv where the job has GPUs]
#   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S  Ray's drain on SIGTERM before a node stops [0: stop at once]
#   RAY_AUTH_MODE               Ray's authentication, for every node and the entry point [token]
# Token authentication (Ray's default for `ray start` clusters since 2.59) uses the token where Ray looks for it
# (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token; the head writes a new ~/.ray/auth_token if there is
# none): every node must see the same one, e.g. through a shared home or RAY_AUTH_TOKEN_PATH on a shared disk.

ray_cluster_config() {
  : "${SLURM_JOB_ID:?not in a SLURM job: submit with sbatch}"
  GRPO_LAMBDA_DIR=${GRPO_LAMBDA_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
  GRPO_LAMBDA_CONTAINER_IMAGE=${GRPO_LAMBDA_CONTAINER_IMAGE:-}
  if [[ -z ${GRPO_LAMBDA_VENV:-} ]]; then
    if [[ -n $GRPO_LAMBDA_CONTAINER_IMAGE ]]; then GRPO_LAMBDA_VENV=none; else GRPO_LAMBDA_VENV=$GRPO_LAMBDA_DIR/.venv; fi
  fi
  GRPO_LAMBDA_RAY_PORT=${GRPO_LAMBDA_RAY_PORT:-$((20000 + 4 * (SLURM_JOB_ID % 3000)))}
  GRPO_LAMBDA_RAY_TMPDIR=${GRPO_LAMBDA_RAY_TMPDIR:-/tmp/ray-$SLURM_JOB_ID}
  GRPO_LAMBDA_RAY_KEEP_TMPDIR=${GRPO_LAMBDA_RAY_KEEP_TMPDIR:-0}
  GRPO_LAMBDA_RAY_DASHBOARD=${GRPO_LAMBDA_RAY_DASHBOARD:-0}
  GRPO_LAMBDA_RAY_START_TIMEOUT_S=${GRPO_LAMBDA_RAY_START_TIMEOUT_S:-300}
  GRPO_LAMBDA_STOP_TIMEOUT_S=${GRPO_LAMBDA_STOP_TIMEOUT_S:-20}
  RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
  _ray_cluster_auth || return 2
  if [[ -n $GRPO_LAMBDA_CONTAINER_IMAGE && -z ${GRPO_LAMBDA_CONTAINER_RUNTIME:-} ]]; then
    if srun --help 2>&1 | grep -q -- --container-image; then
      GRPO_LAMBDA_CONTAINER_RUNTIME=pyxis
    else
      GRPO_LAMBDA_CONTAINER_RUNTIME=apptainer
    fi
  fi
  GRPO_LAMBDA_CONTAINER_RUNTIME=${GRPO_LAMBDA_CONTAINER_RUNTIME:-}
  GRPO_LAMBDA_CONTAINER_ARGS=${GRPO_LAMBDA_CONTAINER_ARGS:-}
  if [[ ! -d $GRPO_LAMBDA_DIR/grpo_lambda ]]; then
    echo "ray_cluster: $GRPO_LAMBDA_DIR is not the grpo-lambda repository; set GRPO_LAMBDA_DIR" >&2
    return 2
  fi
  if [[ $GRPO_LAMBDA_VENV != none ]]; then
    if [[ ! -x $GRPO_LAMBDA_VENV/bin/python ]]; then
      echo "ray_cluster: no virtual environment at $GRPO_LAMBDA_VENV; set GRPO_LAMBDA_VENV (or =none)" >&2
      return 2
    fi
    export VIRTUAL_ENV=$GRPO_LAMBDA_VENV PATH=$GRPO_LAMBDA_VENV/bin:$PATH
  fi
  if [[ -z ${GRPO_LAMBDA_RAY_HEAD_IP:-} ]]; then
    GRPO_LAMBDA_RAY_HEAD_IP=$(_ray_cluster_default_ip)
  fi
  # srun passes the environment on: the nodes' Ray and the entry point see the same settings.
  export GRPO_LAMBDA_DIR GRPO_LAMBDA_VENV GRPO_LAMBDA_RAY_PORT GRPO_LAMBDA_RAY_TMPDIR GRPO_LAMBDA_RAY_KEEP_TMPDIR \
    GRPO_LAMBDA_RAY_DASHBOARD GRPO_LAMBDA_RAY_HEAD_IP RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S RAY_AUTH_MODE \
    PYTHONUNBUFFERED=1
  RAY_CLUSTER_ADDRESS=$GRPO_LAMBDA_RAY_HEAD_IP:$GRPO_LAMBDA_RAY_PORT
}

# Token authentication unless RAY_AUTH_MODE says otherwise. `ray start --head` turns it on by itself only when a
# token exists, and `ray start --address` never does (it then fails with "InvalidAuthToken"): so the whole job gets
# RAY_AUTH_MODE=token, and a token in ~/.ray/auth_token (where Ray's `ray get-auth-token --generate` puts it) when
# there is none.
_ray_cluster_auth() {
  if [[ -n ${RAY_AUTH_MODE:-} ]]; then return 0; fi
  RAY_AUTH_MODE=token
  if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then return 0; fi
  if [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
    if [[ -s $RAY_AUTH_TOKEN_PATH ]]; then return 0; fi
    echo "ray_cluster: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH holds no token" >&2
    return 1
  fi
  local token_file=$HOME/.ray/auth_token
  if [[ ! -s $token_file ]]; then
    echo "ray_cluster: no Ray token: writing a new one to $token_file (every node must see it)"
    mkdir -p "$(dirname "$token_file")"
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$token_file")
  fi
}

# The address Ray itself picks for a node (the source address of the route to a public address), else the
# first of `hostname -I`.
_ray_cluster_default_ip() {
  local ip=""
  if command -v python3 >/dev/null; then
    ip=$(python3 -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("8.8.8.8", 80))
print(s.getsockname()[0])' 2>/dev/null) || ip=""
  fi
  if [[ -z $ip ]]; then ip=$(hostname -I 2>/dev/null | awk '{print $1}'); fi
  echo "${ip:-127.0.0.1}"
}

# "72(x2),36" (SLURM_JOB_CPUS_PER_NODE) -> "72 72 36"
_ray_cluster_expand_counts() {
  local item i out=() items
  IFS=, read -ra items <<<"$1"
  for item in "${items[@]}"; do
    if [[ $item =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
      for ((i = 0; i < BASH_REMATCH[2]; i++)); do out+=("${BASH_REMATCH[1]}"); done
    else
      out+=("$item")
    fi
  done
  echo "${out[*]}"
}

# ARGS... -> the same command inside the container image, if any (apptainer; pyxis wraps srun instead).
_ray_cluster_wrap() {
  if [[ $GRPO_LAMBDA_CONTAINER_RUNTIME == apptainer ]]; then
    local extra=() binds=(--bind "$GRPO_LAMBDA_DIR" --bind "$(dirname "$GRPO_LAMBDA_RAY_TMPDIR")")
    read -ra extra <<<"$GRPO_LAMBDA_CONTAINER_ARGS"
    if ((${SLURM_GPUS_ON_NODE:-0} > 0)); then extra=(--nv "${extra[@]}"); fi
    RAY_CLUSTER_CMD=(apptainer exec "${binds[@]}" "${extra[@]}" "$GRPO_LAMBDA_CONTAINER_IMAGE" "$@")
  else
    RAY_CLUSTER_CMD=("$@")
  fi
}

# NODE CPUS NAME ARGS... -> RAY_CLUSTER_CMD: an srun step running ARGS on NODE with its CPUs (in the image, if any).
_ray_cluster_srun() {
  local node=$1 cpus=$2 name=$3 extra=()
  shift 3
  local step=(srun --nodes=1 --ntasks=1 --overlap -w "$node" --cpus-per-task="$cpus" --job-name="$name"
    --kill-on-bad-exit=0)
  if [[ $GRPO_LAMBDA_CONTAINER_RUNTIME == pyxis ]]; then
    read -ra extra <<<"$GRPO_LAMBDA_CONTAINER_ARGS"
    local tmp_parent
    tmp_parent=$(dirname "$GRPO_LAMBDA_RAY_TMPDIR")
    step+=(--container-image="$GRPO_LAMBDA_CONTAINER_IMAGE" --container-workdir="$GRPO_LAMBDA_DIR"
      --container-mounts="$GRPO_LAMBDA_DIR:$GRPO_LAMBDA_DIR,$tmp_parent:$tmp_parent" "${extra[@]}")
    RAY_CLUSTER_CMD=("${step[@]}" "$@")
  else
    _ray_cluster_wrap "$@"
    RAY_CLUSTER_CMD=("${step[@]}" "${RAY_CLUSTER_CMD[@]}")
  fi
}

RAY_CLUSTER_PIDS=()      # this job's Ray: local processes (the head's runner) ...
RAY_CLUSTER_STEP_PIDS=() # ... and the srun processes of its steps (the workers; the head too through pyxis)
RAY_CLUSTER_MAIN_PID=""  # the entry point (a local process, or an srun step's through pyxis)
RAY_CLUSTER_STEP_PREFIX=grpo-lambda

ray_cluster_start() {
  local nodes cpus_per_node i
  read -ra nodes <<<"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tr '\n' ' ')"
  read -ra cpus_per_node <<<"$(_ray_cluster_expand_counts "${SLURM_JOB_CPUS_PER_NODE:-${SLURM_CPUS_ON_NODE:-1}}")"
  echo "ray_cluster: job $SLURM_JOB_ID, ${#nodes[@]} node(s) ${nodes[*]}; head ${nodes[0]} at $RAY_CLUSTER_ADDRESS;" \
    "temp dir $GRPO_LAMBDA_RAY_TMPDIR"
  local node_cmd=(bash "$GRPO_LAMBDA_DIR/scripts/slurm/ray_cluster.sh" node)
  if [[ $GRPO_LAMBDA_CONTAINER_RUNTIME == pyxis ]]; then
    _ray_cluster_srun "${nodes[0]}" "${cpus_per_node[0]}" "$RAY_CLUSTER_STEP_PREFIX-ray" "${node_cmd[@]}" head
    "${RAY_CLUSTER_CMD[@]}" &
    RAY_CLUSTER_STEP_PIDS+=($!)
  else
    _ray_cluster_wrap "${node_cmd[@]}" head # the head runs here, in the batch step
    "${RAY_CLUSTER_CMD[@]}" &
    RAY_CLUSTER_PIDS+=($!)
  fi
  _ray_cluster_wait_for_head "$!" || return 1
  for ((i = 1; i < ${#nodes[@]}; i++)); do
    _ray_cluster_srun "${nodes[i]}" "${cpus_per_node[i]:-${cpus_per_node[-1]}}" "$RAY_CLUSTER_STEP_PREFIX-ray" \
      "${node_cmd[@]}" worker "$RAY_CLUSTER_ADDRESS"
    "${RAY_CLUSTER_CMD[@]}" &
    RAY_CLUSTER_STEP_PIDS+=($!)
  done
}

# Ready when Ray has written the head's address into its temp dir (after the GCS and the head's raylet are up;
# through pyxis, whose step may see another /tmp: when the GCS port answers).
_ray_cluster_wait_for_head() {
  local pid=$1 deadline=$((SECONDS + GRPO_LAMBDA_RAY_START_TIMEOUT_S))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "ray_cluster: the Ray head exited before it was up (its output is above)" >&2
      return 1
    fi
    if [[ $GRPO_LAMBDA_CONTAINER_RUNTIME == pyxis ]]; then
      if (exec 3<>"/dev/tcp/$GRPO_LAMBDA_RAY_HEAD_IP/$GRPO_LAMBDA_RAY_PORT") 2>/dev/null; then return 0; fi
    elif [[ -s $GRPO_LAMBDA_RAY_TMPDIR/ray_current_cluster ]]; then
      return 0
    fi
    sleep 1
  done
  echo "ray_cluster: the Ray head is not up after ${GRPO_LAMBDA_RAY_START_TIMEOUT_S} s" >&2
  return 1
}

# MODULE ARGS...: python -m MODULE joined to this job's Ray cluster, on the head node, in the background.
ray_cluster_run() {
  local module=$1
  shift
  local cmd=(python -m "$module" cluster=ray_job "cluster.address=$RAY_CLUSTER_ADDRESS"
    "cluster.num_nodes=$SLURM_JOB_NUM_NODES" "$@")
  echo "ray_cluster: ${cmd[*]}"
  if [[ $GRPO_LAMBDA_CONTAINER_RUNTIME == pyxis ]]; then
    local head
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    _ray_cluster_srun "$head" "${SLURM_CPUS_ON_NODE:-1}" "$RAY_CLUSTER_STEP_PREFIX-main" "${cmd[@]}"
    RAY_CLUSTER_CMD=("${RAY_CLUSTER_CMD[0]}" --gres=none "${RAY_CLUSTER_CMD[@]:1}") # the driver needs no GPU
  else
    _ray_cluster_wrap "${cmd[@]}"
  fi
  (cd "$GRPO_LAMBDA_DIR" && exec "${RAY_CLUSTER_CMD[@]}") &
  RAY_CLUSTER_MAIN_PID=$!
}

# NAME "LOCAL PIDS" "STEP PIDS": SIGTERM to the local processes and to this job's steps named NAME (a signal to
# srun would end its step with SIGKILL; `scancel --signal=TERM` gives the step's processes a SIGTERM); wait up to
# GRPO_LAMBDA_STOP_TIMEOUT_S for all of them, then SIGKILL what is left.
_ray_cluster_terminate() {
  local name=$1 locals steps_pids pids pid alive steps
  read -ra locals <<<"$2"
  read -ra steps_pids <<<"$3"
  pids=("${locals[@]}" "${steps_pids[@]}")
  ((${#pids[@]} > 0)) || return 0
  if ((${#locals[@]} > 0)); then kill -TERM "${locals[@]}" 2>/dev/null || true; fi
  if ((${#steps_pids[@]} > 0)); then
    steps=$(squeue --steps --jobs "$SLURM_JOB_ID" --noheader --format='%i %j' 2>/dev/null |
      awk -v name="$name" '$2 == name {print $1}') || steps=""
    # shellcheck disable=SC2086 # one step id per word
    if [[ -n $steps ]]; then scancel --quiet --signal=TERM $steps 2>/dev/null || true; fi
  fi
  local deadline=$((SECONDS + GRPO_LAMBDA_STOP_TIMEOUT_S))
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${pids[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
    ((alive)) || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "ray_cluster: process $pid still running after ${GRPO_LAMBDA_STOP_TIMEOUT_S} s: SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait "${pids[@]}" 2>/dev/null || true
}

# Stop the entry point (if still running), then this job's Ray; once.
ray_cluster_stop() {
  trap - EXIT TERM INT HUP
  if [[ -n $RAY_CLUSTER_MAIN_PID ]]; then
    if [[ $GRPO_LAMBDA_CONTAINER_RUNTIME == pyxis ]]; then
      _ray_cluster_terminate "$RAY_CLUSTER_STEP_PREFIX-main" "" "$RAY_CLUSTER_MAIN_PID"
    else
      _ray_cluster_terminate "$RAY_CLUSTER_STEP_PREFIX-main" "$RAY_CLUSTER_MAIN_PID" ""
    fi
    RAY_CLUSTER_MAIN_PID=""
  fi
  if ((${#RAY_CLUSTER_PIDS[@]} + ${#RAY_CLUSTER_STEP_PIDS[@]} > 0)); then
    echo "ray_cluster: stopping this job's Ray"
    _ray_cluster_terminate "$RAY_CLUSTER_STEP_PREFIX-ray" "${RAY_CLUSTER_PIDS[*]}" "${RAY_CLUSTER_STEP_PIDS[*]}"
    RAY_CLUSTER_PIDS=() RAY_CLUSTER_STEP_PIDS=()
  fi
}

# Until the entry point ends: say so when a node's Ray ends before it (the entry point decides what that means;
# a node missing at the start makes it fail after cluster.join_timeout_s).
_ray_cluster_watch() {
  local pid reported=" "
  while kill -0 "$RAY_CLUSTER_MAIN_PID" 2>/dev/null; do
    for pid in "${RAY_CLUSTER_PIDS[@]}" "${RAY_CLUSTER_STEP_PIDS[@]}"; do
      if [[ $reported != *" $pid "* ]] && ! kill -0 "$pid" 2>/dev/null; then
        echo "ray_cluster: a node's Ray has exited (process $pid; its output is above)" >&2
        reported+="$pid "
      fi
    done
    sleep 1
  done
}

# MODULE ARGS...: the whole job; exits with the entry point's status (143 when cancelled, 130 on SIGINT).
ray_cluster_main() {
  ray_cluster_config || exit 2
  trap 'ray_cluster_stop' EXIT
  trap 'echo "ray_cluster: SIGTERM: stopping" >&2; exit 143' TERM
  trap 'echo "ray_cluster: SIGINT: stopping" >&2; exit 130' INT
  trap 'exit 129' HUP
  ray_cluster_start || exit 1
  ray_cluster_run "$@"
  _ray_cluster_watch
  local rc=0
  wait "$RAY_CLUSTER_MAIN_PID" || rc=$?
  RAY_CLUSTER_MAIN_PID=""
  echo "ray_cluster: $1 exited with status $rc"
  exit "$rc"
}

# `ray_cluster.sh node head|worker [ADDRESS]`: one node's `ray start --block`, sized from the allocation; SIGTERM,
# SIGINT or SIGHUP reach Ray as SIGTERM, and its temp dir is removed once it has stopped.
_ray_cluster_node() {
  local role=$1 address=${2:-} tmp port=$GRPO_LAMBDA_RAY_PORT
  local cpus=${GRPO_LAMBDA_RAY_CPUS:-${SLURM_CPUS_ON_NODE:?SLURM_CPUS_ON_NODE unset: set GRPO_LAMBDA_RAY_CPUS}}
  local gpus=${GRPO_LAMBDA_RAY_GPUS:-${SLURM_GPUS_ON_NODE:-0}}
  local args=(--block --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats
    --dashboard-agent-listen-port=$((port + 3)))
  local extra=()
  if [[ $role == head ]]; then
    read -ra extra <<<"${GRPO_LAMBDA_RAY_HEAD_ARGS:-}"
    tmp=$GRPO_LAMBDA_RAY_TMPDIR
    local dashboard=false
    if [[ $GRPO_LAMBDA_RAY_DASHBOARD == 1 ]]; then dashboard=true; fi
    args+=(--head --node-ip-address="$GRPO_LAMBDA_RAY_HEAD_IP" --port="$port" --ray-client-server-port=$((port + 1))
      --dashboard-port=$((port + 2)) --include-dashboard="$dashboard" --dashboard-host=127.0.0.1)
  else
    read -ra extra <<<"${GRPO_LAMBDA_RAY_WORKER_ARGS:-}"
    tmp=$GRPO_LAMBDA_RAY_TMPDIR-w # a head and a worker sharing a machine never share a folder
    args+=(--address="$address")
  fi
  args+=(--temp-dir="$tmp" "${extra[@]}")
  echo "ray_cluster: $(hostname -s): Ray $role, $cpus CPUs, $gpus GPUs"
  ray start "${args[@]}" &
  local pid=$! rc=0 stopping=0
  trap 'stopping=1; kill -TERM "$pid" 2>/dev/null' TERM INT HUP
  while kill -0 "$pid" 2>/dev/null; do
    rc=0
    wait "$pid" || rc=$?
  done
  if [[ $GRPO_LAMBDA_RAY_KEEP_TMPDIR != 1 ]]; then rm -rf "$tmp"; fi
  if ((stopping)); then rc=0; fi # asked to stop: `ray start --block` then exits 1
  exit "$rc"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    node) _ray_cluster_node "${@:2}" ;;
    *)
      echo "usage: ray_cluster.sh node head|worker [HEAD_IP:PORT]  (or source it; see its header)" >&2
      exit 2
      ;;
  esac
fi
