"""What a killed driver leaves running, ended when its run starts again.

A local Ray started by `ray.init` shares the driver's fate: its GCS and raylet die with the driver (Linux
PR_SET_PDEATHSIG), and the workers (learner ranks, engines, verifiers and their children) follow the raylet within
a second or two. Two of Ray's own processes do not: the dashboard agent and the runtime-env agent notice the raylet's
death, then keep retrying the dead GCS for about a minute before they exit, holding their ports (the agent's
fixed listen port among them) and memory.

So the driver records its own process tree in the run folder once Ray has started (`record`); a driver starting on
that run folder later ends whatever of the recorded processes still runs (`reap`), once the recording driver is gone.
Only processes that descended from that driver are ever touched: each is matched by PID *and* start time (a PID
reused since is left alone), only on the host that recorded them, and never while the recording driver lives. See
docs/faults.md, "Driver killed".
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from grpo_lambda.utils import atomic_write_json

RECORD_FILE = ".driver_processes.json"


def _identity(proc) -> dict:
    return {"pid": proc.pid, "create_time": proc.create_time(), "name": proc.name()}


def _same_process(entry: dict):
    """The live process `entry` describes (same PID and start time), or None; a zombie counts as gone."""
    import psutil

    try:
        proc = psutil.Process(int(entry["pid"]))
        if abs(proc.create_time() - float(entry["create_time"])) > 0.01:
            return None  # the PID was reused
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def record(run_dir: str | Path) -> Path:
    """Write this driver's identity and its descendant processes (Ray's, once started) to the run folder."""
    import psutil

    me = psutil.Process()
    children = []
    for child in me.children(recursive=True):
        try:
            children.append(_identity(child))
        except psutil.Error:  # ended meanwhile
            continue
    data = {"host": socket.gethostname(), "driver": _identity(me), "processes": children}
    return atomic_write_json(Path(run_dir) / RECORD_FILE, data)


def reap(run_dir: str | Path, timeout_s: float = 10.0) -> list[int]:
    """End the processes a killed driver of this run folder left running; returns their PIDs (usually none)."""
    import psutil

    path = Path(run_dir) / RECORD_FILE
    try:
        data = json.loads(path.read_text())
        host, driver, entries = data["host"], data["driver"], list(data["processes"])
    except (OSError, ValueError, KeyError, TypeError):
        return []  # no record (a new run), or one written by hand / cut short: nothing we can match safely
    if host != socket.gethostname():
        return []
    if _same_process(driver) is not None:
        return []  # the recording driver lives (this process, or one that finished its run): its processes are its own
    alive = [(e, p) for e in entries if (p := _same_process(e)) is not None]
    for _, proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    deadline = time.monotonic() + timeout_s
    while any(_same_process(e) is not None for e, _ in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    still = [e["pid"] for e, _ in alive if _same_process(e) is not None]
    if still:
        print(f"[grpo-lambda] WARNING: processes {still} left by the previous driver did not end", flush=True)
    return [int(e["pid"]) for e, _ in alive]
