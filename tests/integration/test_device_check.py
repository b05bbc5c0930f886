"""scripts/device_check.py (the prepared GPU-machine check) on CPU, with the packages the GPU image lacks blocked,
so the script keeps working between the sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
ABSENT_ON_THE_GPU_IMAGE = ("ray", "vllm", "hydra", "omegaconf", "wandb", "math_verify")


@pytest.mark.timeout(240)
def test_device_check_passes_on_cpu_without_ray_or_vllm():
    code = (
        "import runpy, sys\n"
        f"for name in {ABSENT_ON_THE_GPU_IMAGE!r}:\n"
        "    sys.modules[name] = None  # import fails, as on the GPU image\n"
        f"sys.argv = ['device_check.py', '--device', 'cpu']\n"
        f"runpy.run_path({str(REPO / 'scripts' / 'device_check.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=230, cwd=REPO)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and rows and rows[-1]["summary"] == "OK", (done.stdout + done.stderr)[-4000:]
    checks = {r["check"] for r in rows if "check" in r}
    assert {"trace", "loss", "loss_lambda0_is_grpo", "sync", "learner", "step_w"} <= checks
    learner = next(r for r in rows if r.get("check") == "learner")
    assert "skipped" not in learner and learner["sent"]["tensors"] > 0
