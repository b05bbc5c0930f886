"""Three Ray nodes on one machine, as on a cluster: a head (127.0.0.2) and two workers (127.0.0.3, 127.0.0.4), each
a `ray start --block` with its own CPUs and a custom resource naming its role, all on loopback addresses of their
own (Ray keeps a node IP other than 127.0.0.1 as given). Checked:

- a local run (`cluster.address: null`) starts its own Ray although `ray start` recorded this cluster in Ray's
  default temp folder (/tmp/ray/ray_current_cluster), which is what `ray.init()` would join;
- a run that joins with `cluster.address` waits for `cluster.num_nodes`, places verifier, rollout engine and learner
  ranks on the nodes `cluster.role_resources` pins them to (read back from the GCS's actor table), and the weight
  sync crosses nodes (rollout.sync_check: the engine's weights equal the learner's);
- the learner's node stopped mid-run: the driver stops with an error naming the dead rank and its node, in seconds.

The head is the only node in the default temp folder (that is the case under test); the record Ray keeps there is
restored afterwards. Nothing here runs `ray stop` (it would stop every Ray on the machine): each node is stopped by
signalling its own `ray start --block` process group.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from grpo_lambda.distributed.rendezvous import find_free_port

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
RECORD = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # where `ray start` records its cluster
NODES = {  # node IP -> (logical CPUs, the custom resource that pins a role there)
    "127.0.0.2": (1, "verifier_node"),  # the head
    "127.0.0.3": (2, "rollout_node"),
    "127.0.0.4": (2, "learner_node"),
}
PINS = [  # the run's pins: a small amount each, so a node's resource never limits how many actors share it
    "+cluster.role_resources.reward.verifier_node=0.01",
    "+cluster.role_resources.rollout.rollout_node=0.01",
    "+cluster.role_resources.learner.learner_node=0.01",
]
RUN = ["experiment=cpu_tiny_test", "trainer.eval_every_steps=0", "trainer.eval_before_train=false",
       "trainer.save_every_steps=0"]  # fmt: skip


class RayNode:
    """One `ray start --block` in a process group of its own; `stop()` signals the group (Ray's own shutdown)."""

    def __init__(self, ip: str, env: dict, head_port: int, log: Path, temp_dir: str | None):
        cpus, resource = NODES[ip]
        head = ip == "127.0.0.2"
        cmd = ["ray", "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}",
               f"--resources={json.dumps({resource: 1})}", "--object-store-memory=200000000",
               f"--dashboard-agent-listen-port={find_free_port()}", "--disable-usage-stats"]  # fmt: skip
        cmd += (
            ["--head", f"--port={head_port}", "--include-dashboard=false"]
            if head
            else [f"--address=127.0.0.2:{head_port}"]
        )
        cmd += [f"--temp-dir={temp_dir}"] if temp_dir else []
        self.ip, self.log = ip, log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
            )

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 30) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The three nodes; yields the head's address, the environment a client needs (its token) and the nodes."""
    logs = tmp_path_factory.mktemp("ray_nodes")
    saved_record = RECORD.read_bytes() if RECORD.exists() else None
    token = logs / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token), RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")  # stop at once on SIGTERM  # fmt: skip
    port = find_free_port()
    temp_dirs = [tempfile.mkdtemp(prefix="mn", dir="/tmp") for _ in range(2)]  # short: Ray's unix sockets
    nodes = {"127.0.0.2": RayNode("127.0.0.2", env, port, logs / "head.log", None)}
    try:
        deadline = time.monotonic() + 120
        while not (RECORD.exists() and RECORD.read_text().strip() == f"127.0.0.2:{port}"):
            assert nodes["127.0.0.2"].proc.poll() is None, nodes["127.0.0.2"].log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the head did not record itself in 120 s"
            time.sleep(0.5)
        for ip, temp_dir in zip(("127.0.0.3", "127.0.0.4"), temp_dirs, strict=True):
            nodes[ip] = RayNode(ip, env, port, logs / f"{ip}.log", temp_dir)
        yield {"address": f"127.0.0.2:{port}", "env": env, "nodes": nodes}
    finally:
        for node in nodes.values():  # all at once: each shuts its own processes down
            node.signal(signal.SIGTERM)
        for node in nodes.values():
            node.stop()
        for temp_dir in temp_dirs:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if saved_record is None:
            RECORD.unlink(missing_ok=True)
        else:
            RECORD.write_bytes(saved_record)


def train(out: Path, env: dict, *overrides: str, timeout_s: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "grpo_lambda.train", *RUN, f"trainer.output_dir={out}", *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [row["step"] for row in map(json.loads, path.read_text().splitlines()) if "reward/mean" in row]


@pytest.mark.timeout(600)
def test_a_local_run_starts_its_own_ray_whatever_ray_start_recorded(cluster, tmp_path):
    """Before the fix: ray.init(num_cpus=...) found the record and failed with Ray's "When connecting to an existing
    cluster, num_cpus and num_gpus must not be provided"."""
    assert RECORD.read_text().strip() == cluster["address"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # Ray's default temp folder
    done = train(tmp_path, env, "trainer.total_steps=1", timeout_s=550)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Started a local Ray instance" in output and cluster["address"] not in output, output[-4000:]
    assert steps(tmp_path / "cpu_tiny_test") == [1]


ACTORS = """
import json, ray
from ray._private import state
ray.init(address="{address}", logging_level="ERROR")
print("ACTORS", json.dumps([(a["ActorClassName"], a["Address"]["IPAddress"]) for a in state.actors().values()]))
"""


@pytest.mark.timeout(600)
def test_roles_run_on_the_nodes_they_are_pinned_to_and_weights_cross_nodes(cluster, tmp_path):
    joined = [f"cluster.address={cluster['address']}", "cluster.num_nodes=3", "cluster.join_timeout_s=120",
              "cluster.placement=split", *PINS]  # fmt: skip
    done = train(tmp_path, cluster["env"], *joined, "trainer.total_steps=2", timeout_s=550)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert steps(tmp_path / "cpu_tiny_test") == [1, 2]  # each step pushed the weights, read back (sync_check)

    table = subprocess.run([sys.executable, "-c", ACTORS.format(address=cluster["address"])], env=cluster["env"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    line = next((x for x in table.stdout.splitlines() if x.startswith("ACTORS ")), None)
    assert line, table.stdout + table.stderr
    where: dict[str, set[str]] = {}
    for cls, ip in json.loads(line.removeprefix("ACTORS ")):
        where.setdefault(cls, set()).add(ip)
    assert where.get("LearnerActor") == {"127.0.0.4"}, where
    assert where.get("EngineActor") == {"127.0.0.3"}, where
    assert where.get("VerifierWorker") == {"127.0.0.2"}, where


@pytest.mark.timeout(300)
def test_a_run_the_cluster_can_never_place_fails_at_once_naming_what_it_asked_for(cluster, tmp_path):
    joined = [f"cluster.address={cluster['address']}", "cluster.placement=split",
              "+cluster.role_resources.rollout.gpu_node=1"]  # fmt: skip
    start = time.monotonic()
    done = train(tmp_path, cluster["env"], *joined, timeout_s=250)
    took = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "PlacementError" in output, output[-4000:]
    assert "'gpu_node': 1.0" in output and "can never hold" in output and "rollout_node" in output, output[
        -4000:
    ]
    assert took < 200, f"{took:.0f} s"  # the driver's start-up; the placement itself waits for nothing


@pytest.mark.timeout(600)
def test_a_worker_node_stopped_mid_run_stops_the_run_naming_the_node(cluster, tmp_path):
    """Last in this file: it stops the learner's node."""
    joined = [
        f"cluster.address={cluster['address']}",
        "cluster.num_nodes=3",
        "cluster.placement=split",
        *PINS,
    ]
    cmd = [sys.executable, "-m", "grpo_lambda.train", *RUN, f"trainer.output_dir={tmp_path}", *joined,
           "trainer.total_steps=200"]  # fmt: skip
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen(cmd, cwd=REPO, env=cluster["env"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while not steps(tmp_path / "cpu_tiny_test"):
            assert driver.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.5)
        stopped = time.monotonic()
        cluster["nodes"]["127.0.0.4"].stop()
        driver.wait(timeout=180)
        took = time.monotonic() - stopped
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    output = log.read_text()
    assert driver.returncode != 0, output[-4000:]
    assert "LearnerFailure" in output and "127.0.0.4" in output, output[-4000:]
    assert took < 120, f"the driver stopped {took:.0f} s after the node"
    print(f"driver stopped {took:.1f} s after the learner's node")
