"""Secure defaults (docs/security.md): Ray on 127.0.0.1 with no dashboard unless configured, the weight-sync store
and gloo listening on the address they are given (loopback on one node), `torch.load(weights_only=True)` for
everything grpo_lambda loads (DeepSpeed's own loads included, allowing its three checkpoint classes only), and no
pickle / eval / exec / unsafe YAML / remote code in grpo_lambda's source. The listening sockets of a real Ray
cluster and a real DeepSpeed resume are in tests/integration/test_security.py."""

from __future__ import annotations

import ast
import os
import pickle
import threading
from datetime import timedelta
from enum import Enum
from pathlib import Path

import psutil
import pytest
import torch

import grpo_lambda
from grpo_lambda.config import Config, load_config

PACKAGE = Path(grpo_lambda.__file__).parent
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


# ------------------------------------------------------------------------------------------ Ray defaults
@pytest.mark.parametrize("overrides", [[], ["experiment=cpu_tiny_test"], ["experiment=cpu_study"]])
def test_cluster_defaults_are_local_only(overrides):
    for cluster in (Config().cluster, load_config(overrides).cluster):
        assert cluster.ray_dashboard is False
        assert cluster.bind_localhost is True
        assert cluster.address is None


def test_init_ray_binds_loopback_and_keeps_the_dashboard_local(monkeypatch):
    """What init_ray hands ray.init: `_node_ip_address=127.0.0.1` while Ray's ENABLE_RAY_CLUSTER is off (else Ray
    swaps in the LAN IP), no dashboard by default and 127.0.0.1 for it when on; bind_localhost=false drops both."""
    import ray
    from ray._private import ray_constants, services

    from grpo_lambda.launch import init_ray

    calls = []

    def fake_init(**kwargs):
        node_ip = kwargs.get("_node_ip_address")
        calls.append((kwargs, services.resolve_ip_for_localhost(node_ip) if node_ip else None))

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        ray._private.worker, "_global_node", None
    )  # a session cluster would answer its own IP
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    saved = ray_constants.ENABLE_RAY_CLUSTER
    init_ray(load_config(["experiment=cpu_tiny_test"]))
    init_ray(load_config(["experiment=cpu_tiny_test", "cluster.ray_dashboard=true"]))
    init_ray(load_config(["experiment=cpu_tiny_test", "cluster.bind_localhost=false"]))
    assert ray_constants.ENABLE_RAY_CLUSTER is saved  # restored after ray.init
    (default, resolved), (dashboard, _), (open_, _) = calls
    assert default["_node_ip_address"] == "127.0.0.1" and resolved == "127.0.0.1"
    assert default["include_dashboard"] is False and default["dashboard_host"] == "127.0.0.1"
    assert dashboard["include_dashboard"] is True and dashboard["dashboard_host"] == "127.0.0.1"
    assert "_node_ip_address" not in open_ and open_["dashboard_host"] == "127.0.0.1"


# ------------------------------------------------------------------------------- weight-sync store, gloo
def listening(pid: int | None = None) -> set[tuple[str, int]]:
    proc = psutil.Process(pid or os.getpid())
    return {
        (c.laddr.ip, c.laddr.port)
        for c in proc.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_sync_group_store_and_gloo_listen_on_loopback_only():
    """Two ranks of a real gloo sync group (threads of this process): every socket the group opened to listen
    (rank 0's TCPStore, gloo's pairs) is on 127.0.0.1; torch's own TCPStore would listen on [::], every interface."""
    from grpo_lambda.distributed.rendezvous import find_free_port
    from grpo_lambda.distributed.sync_protocol import close_group, new_sync_group

    before = listening()
    port = find_free_port()
    groups, errors = {}, []

    def join(rank: int) -> None:
        try:
            groups[rank] = new_sync_group("gloo", "127.0.0.1", port, rank, 2, timeout_s=60)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=join, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors and len(groups) == 2, errors
    try:
        opened = listening() - before
        assert ("127.0.0.1", port) in opened  # the store
        assert len(opened) >= 2, opened  # and gloo's listening pairs
        assert {ip for ip, _ in opened} <= LOOPBACK, opened
    finally:
        for group in groups.values():
            close_group(group)


def test_torch_tcpstore_alone_would_listen_everywhere():
    """Why bound_tcp_store exists (torch 2.13): a plain master TCPStore ignores its host for listening."""
    import torch.distributed as dist

    from grpo_lambda.distributed.rendezvous import bound_tcp_store

    plain = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=10))
    everywhere = {ip for ip, port in listening() if port == plain.port}
    assert everywhere and everywhere <= {"::", "0.0.0.0"}, everywhere
    bound = bound_tcp_store("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=10))
    assert {ip for ip, port in listening() if port == bound.port} == {"127.0.0.1"}
    bound.set("k", "v")
    client = bound_tcp_store("127.0.0.1", bound.port, 1, is_master=False, timeout=timedelta(seconds=10))
    assert client.get("k") == b"v"
    port = bound.port
    del bound, client
    assert port not in {p for _, p in listening()}  # the store closed the socket it was given


def test_bound_store_on_the_node_address_listens_there_only():
    """Across nodes rank 0 hosts the store on its node's IP: that address, not every interface."""
    from grpo_lambda.distributed.rendezvous import bound_tcp_store, is_loopback

    addresses = [a.address for nic in psutil.net_if_addrs().values() for a in nic
                 if a.family.name == "AF_INET" and not is_loopback(a.address)]  # fmt: skip
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address")
    store = bound_tcp_store(addresses[0], 0, 1, is_master=True, timeout=timedelta(seconds=10))
    assert {ip for ip, port in listening() if port == store.port} == {addresses[0]}


def test_is_loopback():
    from grpo_lambda.distributed.rendezvous import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.1.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.2", "192.0.2.2", "node-1"))


# -------------------------------------------------------------------------------- loading checkpoints
class Payload:
    """Runs a shell command when unpickled: what a booby-trapped checkpoint file would hold."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_export_refuses_a_checkpoint_file_holding_code(tmp_path):
    """A model-states file with a pickled call is refused (weights_only), naming the file and the global."""
    from grpo_lambda.export import ExportError, gather_fp32_state_dict

    target = tmp_path / "pwned"
    ds_dir = tmp_path / "learner" / "model"
    ds_dir.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}, "x": Payload(target)}, ds_dir / "mp_rank_00_model_states.pt")
    with pytest.raises(ExportError) as info:
        gather_fp32_state_dict(ds_dir)
    message = str(info.value)
    assert message.startswith(f"{ds_dir / 'mp_rank_00_model_states.pt'}: refused to load")
    assert "GLOBAL" in message and "system" in message and "\n" not in message
    assert not target.exists()


def test_deepspeeds_own_loads_are_weights_only_during_export(tmp_path):
    """The ZeRO path hands the folder to DeepSpeed's zero_to_fp32, which calls torch.load(weights_only=False):
    inside export it runs weights-only too, so a booby-trapped file there is refused as well."""
    from grpo_lambda.compat import deepspeed_checkpoint_globals
    from grpo_lambda.export import ExportError, gather_fp32_state_dict

    _, zero_stage, _ = deepspeed_checkpoint_globals()
    target = tmp_path / "pwned"
    ds_dir = tmp_path / "learner" / "model"
    ds_dir.mkdir(parents=True)
    torch.save({"optimizer_state_dict": {"zero_stage": zero_stage(2), "partition_count": 1}},
               ds_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")  # fmt: skip
    torch.save({"buffer_names": [], "x": Payload(target)}, ds_dir / "mp_rank_00_model_states.pt")
    with pytest.raises(ExportError, match=rf"^{ds_dir}: refused to load"):
        gather_fp32_state_dict(ds_dir)
    assert not target.exists()
    assert torch.load is torch.serialization.load  # the forcing is undone afterwards


def test_weights_only_torch_load_forces_and_restores(tmp_path):
    from grpo_lambda.compat import weights_only_torch_load

    target = tmp_path / "pwned"
    torch.save({"x": Payload(target)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="GLOBAL"), weights_only_torch_load():
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert not target.exists() and torch.load is torch.serialization.load


class EnumByName:
    """Pickles as `getattr(cls, name)`: how Python 3.11.0-3.11.3 pickle an Enum member, and what a crafted file
    would use to reach any attribute of an object it can build."""

    def __init__(self, cls, name):
        self.cls, self.name = cls, name

    def __reduce__(self):
        return getattr, (self.cls, self.name)


class Colour(Enum):
    RED = 1


def getattr_case(case: str) -> tuple[object, str, list]:
    """(cls, name, other allow-listed globals) of a `getattr` the stand-in refuses and the real one answers."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return {
        "class that is no Enum": (LossScaler, "__init__", []),
        "Enum, a classmethod": (ZeroStageEnum, "from_bytes", []),
        "Enum, its metaclass": (ZeroStageEnum, "__class__", []),
        "function's module globals": (torch._utils._rebuild_tensor_v2, "__globals__", []),
        "Enum allow-listed elsewhere": (Colour, "RED", [Colour]),  # not one of weights_only_torch_load's
    }[case]


@pytest.mark.parametrize(
    "case",
    [
        "class that is no Enum",
        "Enum, a classmethod",
        "Enum, its metaclass",
        "function's module globals",
        "Enum allow-listed elsewhere",
    ],
)
def test_getattr_in_a_checkpoint_returns_allow_listed_enum_members_only(tmp_path, case):
    """`builtins.getattr` in a weights-only load is `compat.enum_member_by_name`, not the builtin: anything but a
    member of an Enum passed to weights_only_torch_load is refused. Each file does load with the real getattr."""
    from grpo_lambda.compat import ENUM_BY_NAME_GLOBAL, deepspeed_checkpoint_globals, weights_only_torch_load

    cls, name, elsewhere = getattr_case(case)
    allowed = deepspeed_checkpoint_globals()
    torch.save({"x": EnumByName(cls, name)}, tmp_path / "crafted.pt")
    with torch.serialization.safe_globals([*allowed, *elsewhere, (getattr, ENUM_BY_NAME_GLOBAL)]):  # control
        assert torch.load(tmp_path / "crafted.pt", weights_only=True)["x"] == getattr(cls, name)
    with (
        torch.serialization.safe_globals(elsewhere),
        pytest.raises(pickle.UnpicklingError, match=rf"GLOBAL {ENUM_BY_NAME_GLOBAL} refused getattr\("),
        weights_only_torch_load(allowed),
    ):
        torch.load(tmp_path / "crafted.pt", weights_only=False)
    assert torch.load is torch.serialization.load
    assert not any(isinstance(g, tuple) for g in torch.serialization.get_safe_globals())


def test_export_loads_enum_members_pickled_by_name_and_refuses_other_getattrs(tmp_path):
    """Export (`load_checkpoint_file`) reads a ZeroStageEnum pickled by name (Python 3.11.0-3.11.3) and refuses
    any other `getattr` with an ExportError naming the file and the refusal on one line."""
    from deepspeed.runtime.zero.config import ZeroStageEnum as zero_stage

    from grpo_lambda.export import ExportError, load_checkpoint_file

    good = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    bad = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": EnumByName(zero_stage, "gradients")}}, good)
    assert load_checkpoint_file(good)["optimizer_state_dict"]["zero_stage"] is zero_stage.gradients
    cls, name, _ = getattr_case("class that is no Enum")
    torch.save({"module": {"w": torch.ones(2)}, "x": EnumByName(cls, name)}, bad)
    with pytest.raises(ExportError) as info:
        load_checkpoint_file(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: refused to load") and "\n" not in message
    assert "GLOBAL builtins.getattr refused getattr(deepspeed.runtime.fp16.loss_scaler.LossScaler" in message


# ----------------------------------------------------------------------------- no unsafe calls in source
# (file, what) pairs allowed, with the reason. Keep this empty unless a call cannot be avoided.
ALLOWED: dict[tuple[str, str], str] = {}


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that load pickles, run code or trust remote code: torch.load without weights_only=True, pickle /
    cloudpickle / dill / marshal / shelve loads, builtin eval / exec / compile / __import__, yaml.load without a safe
    loader, yaml.unsafe_load / full_load, np.load(allow_pickle=True), trust_remote_code=True anywhere."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in (
            "torch",
            "pickle",
            "cloudpickle",
            "dill",
            "marshal",
        ):
            found += [
                (node.lineno, f"from {node.module} import {a.name}") for a in node.names if "load" in a.name
            ]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = ast.unparse(func)
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        const = {k: v.value for k, v in kwargs.items() if isinstance(v, ast.Constant)}
        if name.endswith("torch.load"):
            if const.get("weights_only") is not True:
                found.append((node.lineno, "torch.load without weights_only=True"))
        elif isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__"):
            found.append((node.lineno, f"{func.id}()"))
        elif name.split(".")[0] in ("pickle", "cloudpickle", "dill", "marshal", "shelve", "_pickle") and any(
            part in name for part in ("load", "Unpickler", "open")
        ):
            found.append((node.lineno, name))
        elif name.endswith(("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all")):
            found.append((node.lineno, name))
        elif name.endswith("yaml.load") or name.endswith("yaml.load_all"):
            loader = ast.unparse(kwargs["Loader"]) if "Loader" in kwargs else ""
            if "SafeLoader" not in loader and "CSafeLoader" not in loader:
                found.append((node.lineno, f"{name} without SafeLoader"))
        elif name.endswith(("np.load", "numpy.load")) and const.get("allow_pickle") is True:
            found.append((node.lineno, "np.load(allow_pickle=True)"))
        if const.get("trust_remote_code") is True:
            found.append((node.lineno, "trust_remote_code=True"))
    return found


def test_no_unsafe_loads_or_eval_in_the_package():
    sources = sorted(p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts[:1])
    assert len(sources) > 40
    bad = []
    for path in sources:
        rel = str(path.relative_to(PACKAGE))
        for line, what in unsafe_calls(ast.parse(path.read_text(encoding="utf-8"))):
            if (rel, what) not in ALLOWED:
                bad.append(f"grpo_lambda/{rel}:{line}: {what}")
        assert "trust_remote_code=True" not in path.read_text(encoding="utf-8"), rel
    assert bad == [], "\n".join(bad)


def test_the_scan_finds_what_it_looks_for():
    code = """
import pickle, torch, yaml
torch.load(f)
torch.load(f, weights_only=False)
torch.load(f, weights_only=True)
pickle.loads(b)
eval(s)
model.eval()
yaml.load(s)
yaml.load(s, Loader=yaml.SafeLoader)
yaml.safe_load(s)
AutoModel.from_pretrained(p, trust_remote_code=True)
from torch import load
"""
    assert sorted(line for line, _ in unsafe_calls(ast.parse(code))) == [3, 4, 6, 7, 9, 12, 13]
