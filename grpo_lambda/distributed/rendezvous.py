"""torch.distributed rendezvous for a group of Ray actors.

Rank 0 chooses the address (`master_address`, called inside rank 0's process): 127.0.0.1 and a free port when the
whole group is on one node, the node's IP otherwise; a store made by `bound_tcp_store` listens on that address only. Every rank then gets the same `Rendezvous` and sets the standard
environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) before initialising the
process group: gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine's loopback (127.0.0.0/8, ::1 or "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def bound_tcp_store(host: str, port: int, world_size: int, is_master: bool, timeout: timedelta):
    """A torch `TCPStore` at host:port whose server (`is_master`) listens on `host` only; clients connect to it.

    torch's TCPStore server listens on every interface (`[::]`, torch 2.13) whatever `host` says, so the server
    gets a socket already bound to host:port (`master_listen_fd`; the store then owns it and closes it with
    itself). Port 0 binds a free port: read it from `store.port`."""
    import torch.distributed as dist

    if not is_master:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        port = int(sock.getsockname()[1])
    except BaseException:
        sock.close()
        raise
    fd = sock.detach()  # from here the store owns it: closed with the store (or when its constructor fails)
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=fd)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def node_ip_address() -> str:
    """This node's IP as Ray sees it (Ray's own address when Ray is initialised, else the outbound interface)."""
    import ray

    return ray.util.get_node_ip_address()


def master_address(single_node: bool) -> tuple[str, int]:
    """(MASTER_ADDR, MASTER_PORT) for a group whose rank 0 runs in *this* process.

    single_node: all ranks share this node, so the store stays on loopback (nothing listens on a public interface).
    """
    if single_node:
        return "127.0.0.1", find_free_port("127.0.0.1")
    addr = node_ip_address()
    return addr, find_free_port(addr)


def default_backend(device: str | None = None) -> str:
    """ "nccl" when this process trains on a CUDA device, else "gloo"."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "nccl" if str(device).startswith("cuda") else "gloo"


def local_ranks(node_ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """Per global rank: (LOCAL_RANK, LOCAL_WORLD_SIZE), from the node each rank runs on (ranks in order)."""
    counts: dict[str, int] = {}
    local = []
    for node in node_ids:
        local.append(counts.get(node, 0))
        counts[node] = counts.get(node, 0) + 1
    return local, [counts[node] for node in node_ids]


@dataclass(frozen=True)
class Rendezvous:
    """Where and how the ranks of one process group meet."""

    master_addr: str
    master_port: int
    world_size: int

    def env(self, rank: int, local_rank: int = 0, local_world_size: int = 1) -> dict[str, str]:
        """The environment torch.distributed (env://) and DeepSpeed read, for one rank."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside world_size {self.world_size}")
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "RANK": str(rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(local_world_size),
        }
