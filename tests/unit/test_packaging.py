"""A wheel carries the Hydra configs (conf/ via the grpo_lambda/conf symlink) and an installed package finds them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_wheel_ships_the_configs_and_loads_them_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves no build/ folder in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "conf", src / "conf", ignore=ignore)
    shutil.copytree(REPO / "grpo_lambda", src / "grpo_lambda", symlinks=True, ignore=ignore)
    assert (src / "grpo_lambda" / "conf").is_symlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("grpo_lambda-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("grpo_lambda/conf/")}
        zf.extractall(tmp_path / "site")
    expected = {f"grpo_lambda/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert expected and shipped == expected

    code = (
        "import grpo_lambda.config as c\n"
        "cfg = c.load_config(['experiment=cpu_tiny_test', 'algorithm.lam=0.5'])\n"
        "print(c.CONF_DIR, cfg.model.name, cfg.algorithm.lam)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})  # fmt: skip
    conf_dir, model, lam = done.stdout.split()
    assert conf_dir == str(tmp_path / "site" / "grpo_lambda" / "conf") and model == "tiny" and lam == "0.5"
