"""scripts/ray_submit.sh for real: a Ray head started with `ray start` (token authentication on), a training job
submitted through the Jobs API, its run folder written where the arguments said."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from grpo_lambda.distributed.rendezvous import find_free_port

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@pytest.fixture(scope="module")
def ray_head():
    """A second, separate Ray cluster (own temp dir and ports, so the session's local cluster is untouched),
    stopped by signalling its `ray start --block` process group."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # short: Ray's unix sockets live under it
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    ports = {name: find_free_port() for name in ("gcs", "dashboard", "agent", "client")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    head_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    cmd = ["ray", "start", "--head", "--block", "--num-cpus=4", "--node-ip-address=127.0.0.1",
           f"--port={ports['gcs']}", f"--dashboard-port={ports['dashboard']}", "--dashboard-host=127.0.0.1",
           f"--dashboard-agent-listen-port={ports['agent']}", f"--ray-client-server-port={ports['client']}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]  # fmt: skip
    head = subprocess.Popen(cmd, env=head_env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for_port(ports["dashboard"], 60)
        yield {"address": f"http://127.0.0.1:{ports['dashboard']}", "gcs": f"127.0.0.1:{ports['gcs']}", "env": env,
               "token_path": token_path}  # fmt: skip
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(300)
def test_ray_submit_runs_training_on_a_started_cluster(ray_head, tmp_path):
    # The client is given only the token's path: the script must turn on token mode itself.
    env = {
        **ray_head["env"],
        "RAY_ADDRESS": ray_head["address"],
        "RAY_AUTH_TOKEN_PATH": str(ray_head["token_path"]),
    }
    args = ["experiment=cpu_tiny_test", "trainer.total_steps=1", "trainer.eval_every_steps=0",
            "trainer.eval_before_train=false", "trainer.save_every_steps=0", f"trainer.output_dir={tmp_path}"]  # fmt: skip
    done = subprocess.run([str(REPO / "scripts" / "ray_submit.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=280)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in output, output[-4000:]
    run_dir = tmp_path / "cpu_tiny_test"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert (run_dir / "summary.json").is_file()


@pytest.mark.timeout(120)
def test_a_driver_joins_the_token_cluster_given_only_the_token_path(ray_head):
    """What the SLURM script does: `RAY_ADDRESS=head:port python -m grpo_lambda.train cluster=ray_job`."""
    env = {
        **ray_head["env"],
        "RAY_ADDRESS": ray_head["gcs"],
        "RAY_AUTH_TOKEN_PATH": str(ray_head["token_path"]),
    }
    code = (
        "import ray\n"
        "from grpo_lambda.config import load_config\n"
        "from grpo_lambda.launch import init_ray\n"
        "init_ray(load_config(['cluster=ray_job']))\n"
        "print('CPUS', ray.cluster_resources()['CPU'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0 and "CPUS 4.0" in done.stdout, (done.stdout + done.stderr)[-3000:]


def test_launch_scripts_parse():
    for script in ("scripts/ray_submit.sh", "scripts/slurm/train.sbatch", "scripts/device_run.sh"):
        subprocess.run(["bash", "-n", str(REPO / script)], check=True)
