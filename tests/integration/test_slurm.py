"""scripts/slurm/*.sbatch for real: a SLURM cluster on this machine (munged, slurmctld and two slurmd, i.e. two
nodes on localhost, from Debian's slurm-wlm and munge), a training job run to its end, an evaluation job on its
run, and a cancelled two-node training job that must leave no process behind.

The daemons run from a temporary folder with their own ports, key and socket: nothing else on the machine (another
SLURM, another Ray) is touched, and everything started here is stopped by PID at the end."""

from __future__ import annotations

import json
import os
import random
import re
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
SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "sinfo")
# More than this machine's cores (SlurmdParameters=config_overrides): cpu_tiny_test asks Ray for 3.5 CPUs, and the
# scripts size Ray from the allocation (SLURM_CPUS_ON_NODE).
NODE_CPUS = 4
STEPS_ARGS = ["experiment=cpu_tiny_test", "trainer.eval_every_steps=0", "trainer.eval_before_train=false"]


def _missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool, path=SBIN_PATH) is None]


def _ensure_slurm_installed() -> None:
    """slurm-wlm and munge from Debian's packages when missing (root and apt-get needed; skip otherwise)."""
    if not _missing_tools():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"SLURM not installed ({', '.join(_missing_tools())} missing) and no root apt-get to install it"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # stale package lists: update once, then try again
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if _missing_tools():
        pytest.skip(f"could not install slurm-wlm and munge: {(done.stdout + done.stderr)[-1500:]}")


def _ports_free(first: int, count: int) -> bool:
    for port in range(first, first + count):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                return False
    return True


def _ray_port(job_id: int) -> int:
    """scripts/slurm/ray_cluster.sh's default GRPO_LAMBDA_RAY_PORT for a job; the job uses it and the 3 after it."""
    return 20000 + 4 * (job_id % 3000)


def _first_job_id(jobs: int = 8) -> int:
    """A first job id whose next `jobs` ids all get free Ray ports by the scripts' default rule."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(100_000, 1_000_000)
        if all(_ports_free(_ray_port(first + i), 4) for i in range(jobs)):
            return first
    raise RuntimeError("no job id range with free Ray ports")


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


SLURM_CONF = """\
ClusterName=grpotest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket.2
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SlurmdParameters=config_overrides
ReturnToService=2
FirstJobId={first_job_id}
KillWait=30
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={d1_port} CPUs={cpus}
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.1 Port={d2_port} CPUs={cpus}
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm():
    """munged, slurmctld and two slurmd (nodes n1, n2 on 127.0.0.1) from a temporary folder; killed by PID at the
    end. Yields the environment for the SLURM client commands and the jobs (which inherit it)."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM daemons run as root here (SlurmUser=root)")
    _ensure_slurm_installed()
    d = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))
    d.chmod(0o755)  # munged refuses its socket in a folder others cannot enter (mkdtemp makes 700)
    for sub in ("state", "log", "spool-n1", "spool-n2", "runs"):
        (d / sub).mkdir(mode=0o755)
    key = d / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    token = d / "ray_auth_token"  # this cluster's Ray token: ~/.ray is left alone
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    (d / "slurm.conf").write_text(
        SLURM_CONF.format(d=d, ctld_port=find_free_port(), d1_port=find_free_port(), d2_port=find_free_port(),
                          first_job_id=_first_job_id(), host=socket.gethostname().split(".")[0], cpus=NODE_CPUS)
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_"))}
    venv = Path(sys.prefix)
    in_venv = sys.prefix != sys.base_prefix and (venv / "bin" / "python").is_file()
    env.update(
        PATH=f"{Path(sys.executable).parent}:{SBIN_PATH}",
        SLURM_CONF=str(d / "slurm.conf"),
        RAY_AUTH_TOKEN_PATH=str(token),
        GRPO_LAMBDA_VENV=str(venv) if in_venv else "none",
        TOKENIZERS_PARALLELISM="false",
    )
    daemons: list[subprocess.Popen] = []
    cluster = {"env": env, "dir": d, "jobs": []}

    def start(*cmd: str, log: str) -> None:
        with open(d / "log" / log, "wb") as out:
            daemons.append(
                subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )

    try:
        start(shutil.which("munged", path=SBIN_PATH), "-F", f"--key-file={key}", f"--socket={d}/munge.socket.2",
              f"--pid-file={d}/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/munged.seed",
              log="munged.out")  # fmt: skip
        _wait_for(lambda: (d / "munge.socket.2").exists(), 30, "munged's socket")
        start(
            shutil.which("slurmctld", path=SBIN_PATH), "-D", "-f", str(d / "slurm.conf"), log="slurmctld.out"
        )
        for node in ("n1", "n2"):
            start(shutil.which("slurmd", path=SBIN_PATH), "-D", "-N", node, "-f", str(d / "slurm.conf"),
                  log=f"slurmd-{node}.out")  # fmt: skip

        def idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%D %t"], env=env, capture_output=True, text=True
            ).stdout
            return out.split() == ["2", "idle"]

        _wait_for(idle, 60, "two idle SLURM nodes", logs=d / "log")
        yield cluster
    finally:
        _end_jobs(env, cluster["jobs"])
        for proc in reversed(daemons):
            _stop(proc)
        shutil.rmtree(d, ignore_errors=True)


def _end_jobs(env: dict, job_ids: list[int]) -> None:
    """Cancel the jobs this module submitted; SIGKILL by PID whatever of them is still there after 60 s."""
    if not job_ids:
        return
    subprocess.run(["scancel", *map(str, job_ids)], env=env, capture_output=True, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_job_processes(j) for j in job_ids):
        time.sleep(1)
    for job_id in job_ids:
        for pid in _job_processes(job_id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _cleanup_ray_temp(job_id)


def _wait_for(check, timeout_s: float, what: str, logs: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    detail = ""
    if logs is not None:
        detail = "\n".join(
            f"{p.name}: {p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.iterdir())
        )
    raise TimeoutError(f"no {what} after {timeout_s} s\n{detail}")


def _job_fields(slurm, job_id: int) -> dict[str, str]:
    """`scontrol show job` as key -> value (there is no accounting database, so no sacct)."""
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], env=slurm["env"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _job_processes(job_id: int) -> dict[int, str]:
    """Every process of the job: SLURM_JOB_ID=<id> in its environment (Ray's GCS, raylets, workers and actors
    inherit it from `ray start`), or the job's Ray temp dirs in its command line."""
    mark = f"SLURM_JOB_ID={job_id}".encode()
    temp_dir = re.compile(rf"/ray-{job_id}(-w)?(/|\s|$)")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        if mark in environ or temp_dir.search(cmdline):
            found[int(entry.name)] = cmdline.strip()[:200]
    return found


def _log(slurm, name: str) -> str:
    path = slurm["dir"] / name
    return path.read_text(errors="replace") if path.exists() else f"(no {name})"


def _submit(
    slurm, script: str, *args: str, nodes: int = 1, wait: bool
) -> tuple[int, subprocess.CompletedProcess]:
    cmd = ["sbatch", "--parsable", f"--nodes={nodes}", f"--output={slurm['dir']}/job-%j.out"]
    cmd += ["--wait"] if wait else []
    done = subprocess.run([*cmd, str(REPO / "scripts" / "slurm" / script), *args], cwd=REPO, env=slurm["env"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    match = re.match(r"(\d+)", done.stdout.strip())
    assert match, done.stdout + done.stderr
    slurm["jobs"].append(int(match.group(1)))
    return int(match.group(1)), done


def _cleanup_ray_temp(job_id: int) -> None:
    for suffix in ("", "-w"):
        shutil.rmtree(f"/tmp/ray-{job_id}{suffix}", ignore_errors=True)


@pytest.fixture(scope="module")
def trained_run(slurm):
    """train.sbatch run to its end on one node: experiment=cpu_tiny_test (2 steps); the run folder."""
    out = slurm["dir"] / "runs"
    t0 = time.monotonic()
    job_id, done = _submit(
        slurm, "train.sbatch", "experiment=cpu_tiny_test", f"trainer.output_dir={out}", wait=True
    )
    _cleanup_ray_temp(job_id)  # normally removed by the job itself (checked below)
    log = _log(slurm, f"job-{job_id}.out")
    return {
        "job_id": job_id,
        "done": done,
        "log": log,
        "run": out / "cpu_tiny_test",
        "seconds": time.monotonic() - t0,
    }


@pytest.mark.timeout(420)
def test_train_sbatch_runs_training_to_the_end(slurm, trained_run):
    job_id, log = trained_run["job_id"], trained_run["log"]
    fields = _job_fields(slurm, job_id)
    assert trained_run["done"].returncode == 0, log[-5000:]
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-5000:]
    assert "cluster.num_nodes=1" in log and f"Ray head, {NODE_CPUS} CPUs, 0 GPUs" in log, log[-5000:]
    metrics = [json.loads(line) for line in (trained_run["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "reward/mean" in m] == [1, 2]
    assert (trained_run["run"] / "summary.json").is_file()
    assert "stopping this job's Ray" in log
    assert not Path(f"/tmp/ray-{job_id}").exists()  # the job removed its Ray temp dir
    assert _job_processes(job_id) == {}
    print(f"train.sbatch job {job_id}: {trained_run['seconds']:.0f} s")


@pytest.mark.timeout(420)
def test_evaluate_sbatch_evaluates_the_trained_run_on_two_nodes(slurm, trained_run):
    """A Ray worker on the second node through `srun --overlap`; the evaluation waits for it, and at the end the
    worker's Ray stops gracefully."""
    assert trained_run["done"].returncode == 0, trained_run["log"][-5000:]
    out = slurm["dir"] / "eval"
    t0 = time.monotonic()
    job_id, done = _submit(slurm, "evaluate.sbatch", "experiment=cpu_tiny_test", f"model.path={trained_run['run']}",
                           "eval.datasets=[]", "eval.max_response_tokens=16", f"eval.output_dir={out}",
                           nodes=2, wait=True)  # fmt: skip
    worker_tmp_left = Path(f"/tmp/ray-{job_id}-w").exists()
    _cleanup_ray_temp(job_id)
    log = _log(slurm, f"job-{job_id}.out")
    fields = _job_fields(slurm, job_id)
    assert done.returncode == 0, log[-5000:]
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), log[-5000:]
    assert "cluster.num_nodes=2" in log and "Ray worker" in log, log[-5000:]
    # the worker's step was stopped by SIGTERM (scancel --signal), within the stop timeout, and cleaned up
    assert "still running after" not in log and not worker_tmp_left, log[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"]["arithmetic_eval"]["prompts"] == 8
    assert _job_processes(job_id) == {}
    print(f"evaluate.sbatch job {job_id}: {time.monotonic() - t0:.0f} s")


@pytest.mark.timeout(420)
def test_cancelled_two_node_job_leaves_no_process(slurm):
    """A Ray worker on the second node through `srun --overlap`; scancel while training: within a bounded time no
    process of the job is left: no raylet (of either node), no GCS, no actor, no driver."""
    out = slurm["dir"] / "runs-cancel"
    t0 = time.monotonic()
    job_id, done = _submit(slurm, "train.sbatch", *STEPS_ARGS, "trainer.total_steps=500", "trainer.save_every_steps=0",
                           f"trainer.output_dir={out}", nodes=2, wait=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        metrics = out / "cpu_tiny_test" / "metrics.jsonl"

        def training() -> bool:
            state = _job_fields(slurm, job_id)["JobState"]
            log = _log(slurm, f"job-{job_id}.out")
            assert state in ("PENDING", "CONFIGURING", "RUNNING"), f"{state}\n{log[-5000:]}"
            return metrics.is_file() and metrics.stat().st_size > 0

        _wait_for(training, 300, "metrics row")
        started = time.monotonic() - t0
        before = _job_processes(job_id)
        commands = list(before.values())
        assert sum("raylet/raylet" in c for c in commands) == 2, commands  # head and worker node
        assert any("gcs_server" in c for c in commands), commands
        assert any(c.startswith("ray::LearnerActor") for c in commands), commands
        assert any("grpo_lambda.train" in c for c in commands), commands

        subprocess.run(["scancel", str(job_id)], env=slurm["env"], check=True)
        t_cancel = time.monotonic()
        _wait_for(lambda: not _job_processes(job_id), 60, f"end of job {job_id}'s processes")
        gone_s = time.monotonic() - t_cancel
        _wait_for(lambda: _job_fields(slurm, job_id)["JobState"] == "CANCELLED", 30, "CANCELLED state")
        assert not _job_processes(job_id)
        assert not Path(f"/tmp/ray-{job_id}").exists() and not Path(f"/tmp/ray-{job_id}-w").exists()
        print(f"cancel job {job_id}: training after {started:.0f} s, {len(before)} processes, all gone {gone_s:.1f} s "
              "after scancel")  # fmt: skip
    finally:
        subprocess.run(["scancel", str(job_id)], env=slurm["env"], capture_output=True)
        _cleanup_ray_temp(job_id)


def test_slurm_scripts_parse():
    for script in ("train.sbatch", "evaluate.sbatch", "ray_cluster.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / "slurm" / script)], check=True)
