"""grpo_lambda/leftovers.py with real processes: what a SIGKILLed driver left running is ended at the next start,
and nothing else is touched."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil

from grpo_lambda import leftovers

DRIVER = """
import subprocess, sys, time
from grpo_lambda import leftovers
child = subprocess.Popen(["sleep", "120"])  # stands in for a Ray process that outlives its driver
leftovers.record(sys.argv[1])
print(child.pid, flush=True)
time.sleep(120)
"""


def start_driver(run_dir):
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    return driver, int(driver.stdout.readline())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_reap_ends_what_a_killed_driver_left_and_only_that(tmp_path):
    driver, orphan = start_driver(tmp_path)
    bystander = subprocess.Popen(["sleep", "120"])  # not a descendant of the driver
    try:
        assert leftovers.reap(tmp_path) == [] and alive(orphan)  # the recording driver lives: hands off
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        time.sleep(0.2)
        assert alive(orphan)  # nothing ended it: it outlives its driver, as Ray's agents do
        record = json.loads((tmp_path / leftovers.RECORD_FILE).read_text())
        # a recorded PID whose process started at another time is someone else's (PID reuse): never killed
        record["processes"].append({"pid": bystander.pid, "create_time": 1.0, "name": "sleep"})
        (tmp_path / leftovers.RECORD_FILE).write_text(json.dumps(record))
        assert leftovers.reap(tmp_path) == [orphan]
        assert not alive(orphan)
        assert bystander.poll() is None
        assert leftovers.reap(tmp_path) == []  # idempotent
    finally:
        for proc in (driver, bystander):
            proc.kill()
            proc.wait()
        if alive(orphan):
            psutil.Process(orphan).kill()


def test_reap_without_a_record_or_with_a_damaged_one_does_nothing(tmp_path):
    assert leftovers.reap(tmp_path) == []
    (tmp_path / leftovers.RECORD_FILE).write_text('{"host": ')  # cut short
    assert leftovers.reap(tmp_path) == []
