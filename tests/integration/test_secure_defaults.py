"""Secure defaults for real (docs/security.md):

- a local Ray started by `init_ray` with the defaults (and with the dashboard on) listens on 127.0.0.1 only: every
  listening socket of every process of *that* session (found from the node's own process list and their children,
  never machine-wide: other Ray clusters may run beside it);
- a DeepSpeed checkpoint written by our LearnerWorker holds no classes beyond `compat.deepspeed_checkpoint_globals`,
  DeepSpeed's own `engine.load_checkpoint` (resume) and the export both read it with `torch.load(weights_only=True)`,
  and a booby-trapped optimiser file is refused by both without running its code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

RAY_SOCKETS = textwrap.dedent(
    """
    import json, os, sys, time
    import psutil, ray
    from grpo_lambda.config import load_config
    from grpo_lambda.launch import init_ray

    init_ray(load_config(sys.argv[1:]))
    node = ray._private.worker.global_worker.node
    task_ip = ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote())  # a worker process is up too
    time.sleep(5)  # the agents and the dashboard open their ports asynchronously
    pids = {os.getpid()} | {info.process.pid for infos in node.all_processes.values() for info in infos}
    for pid in list(pids):
        try:
            pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            pass
    procs = []
    for pid in sorted(pids):
        try:
            p = psutil.Process(pid)
            listen = sorted({(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                             if c.status == psutil.CONN_LISTEN})
            procs.append({"pid": pid, "name": p.name(), "cmd": " ".join(p.cmdline())[:160], "listen": listen})
        except psutil.Error:
            pass
    print("SOCKETS" + json.dumps({"node_ip": node.node_ip_address, "task_ip": task_ip, "procs": procs}))
    ray.shutdown()
    """
)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("overrides", [[], ["cluster.ray_dashboard=true"]], ids=["defaults", "dashboard"])
def test_a_local_ray_listens_on_loopback_only(overrides):
    ray_tmp = tempfile.mkdtemp(prefix="rsec", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = ray_tmp
    try:
        proc = subprocess.run(
            [sys.executable, "-c", RAY_SOCKETS, "experiment=cpu_tiny_test", *overrides],
            capture_output=True, text=True, timeout=380, env=env,
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("SOCKETS", 1)[1].splitlines()[0])
    assert report["node_ip"] == "127.0.0.1" and report["task_ip"] == "127.0.0.1"
    procs = report["procs"]
    exposed = [(p["name"], ip, port) for p in procs for ip, port in p["listen"] if ip not in LOOPBACK]
    assert exposed == [], exposed
    listeners = {p["name"] for p in procs if p["listen"]}
    assert {"gcs_server", "raylet"} <= listeners, listeners
    assert len([1 for p in procs for _ in p["listen"]]) >= 6  # GCS, raylet x2, agents, driver, worker
    dashboard = [p for p in procs if "dashboard/dashboard.py" in p["cmd"] and p["listen"]]
    assert bool(dashboard) == bool(overrides), [p["cmd"] for p in procs]


RESUME = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from torch.serialization import get_unsafe_globals_in_checkpoint
    from grpo_lambda.compat import deepspeed_checkpoint_globals, weights_only_torch_load
    from grpo_lambda.config import AlgorithmConfig, Config, LearnerConfig, ModelConfig
    from grpo_lambda.export import ExportError, gather_fp32_state_dict
    from grpo_lambda.learner import LearnerWorker

    model_dir, root = sys.argv[1], Path(sys.argv[2])
    cfg = Config(model=ModelConfig(path=model_dir, dtype="float32"), algorithm=AlgorithmConfig(behaviour_is="none"),
                 learner=LearnerConfig(world_size=1, zero_stage=2, mini_batch_samples=2, micro_batch_samples=2))
    worker = LearnerWorker(rank=0, world_size=1)
    worker.init(model_dir, cfg)
    ckpt = Path(worker.save_checkpoint(str(root), "step1", client_state={"trainer_step": 1}))
    files = sorted(ckpt.glob("*.pt"))
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in deepspeed_checkpoint_globals()}
    extra = {f.name: sorted(set(get_unsafe_globals_in_checkpoint(f)) - allowed) for f in files}
    with weights_only_torch_load(deepspeed_checkpoint_globals()):
        client = worker.load_checkpoint(str(root), "step1")  # DeepSpeed's own torch.load calls, forced weights-only
    state = gather_fp32_state_dict(ckpt)
    own = {k: v.float() for k, v in worker.gather_state_dict().items()}
    same = sorted(own) == sorted(state) and all(torch.equal(own[k], state[k]) for k in own)

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {root / 'pwned'}",))

    optim = next(f for f in files if f.name.endswith("optim_states.pt"))
    torch.save({"optimizer_state_dict": {"zero_stage": 2}, "x": Payload()}, optim)
    try:
        with weights_only_torch_load(deepspeed_checkpoint_globals()):
            worker.load_checkpoint(str(root), "step1")
        resume_refused = ""
    except Exception as exc:
        resume_refused = type(exc).__name__ + ": " + [l for l in str(exc).splitlines() if "GLOBAL" in l][0]
    try:
        gather_fp32_state_dict(ckpt)
        export_refused = ""
    except ExportError as exc:
        export_refused = str(exc)
    print("RESULT" + json.dumps({"files": [f.name for f in files], "extra": extra, "client": {"trainer_step": client.get("trainer_step")},
                                 "export_equal": same, "resume_refused": resume_refused,
                                 "export_refused": export_refused, "pwned": (root / "pwned").exists()}))
    """
)


@pytest.mark.timeout(400)
def test_deepspeed_checkpoints_load_weights_only_and_refuse_code(tiny_model_dir, tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
    }
    proc = subprocess.run(
        [sys.executable, "-c", RESUME, str(tiny_model_dir), str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=380, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1].splitlines()[0])
    assert any(f.endswith("optim_states.pt") for f in result["files"]), result["files"]
    # nothing beyond the allow-list
    assert all(extra == [] for extra in result["extra"].values()), result["extra"]
    assert result["client"]["trainer_step"] == 1  # resumed through DeepSpeed under weights_only
    assert result["export_equal"] is True
    assert result["resume_refused"].startswith("UnpicklingError") and "system" in result["resume_refused"]
    assert "refused to load" in result["export_refused"] and "system" in result["export_refused"]
    assert result["pwned"] is False
