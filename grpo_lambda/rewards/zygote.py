"""The verifier zygote: ``python -m grpo_lambda.rewards.zygote FD [--no-warm-parser]``. Forks warm worker
children on request.

Protocol on the control socket FD (owned by ``subprocess_worker._Zygote``): the owner sends 16 bytes
(``timeout_s`` as a double and ``memory_limit_mb`` as an int64, 0 meaning none) with one socket attached
(``SCM_RIGHTS``); the zygote forks a child that runs ``child_main`` on that socket and answers its PID as
an int64. EOF on the control socket (owner closed it or died) ends the zygote; its children follow
(``PR_SET_PDEATHSIG``). Children are reaped automatically (``SIGCHLD`` ignored). The zygote is
single-threaded, so forking it is safe.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys

from grpo_lambda.rewards.equivalence import warm_up
from grpo_lambda.rewards.subprocess_worker import child_main, die_with_parent


def main(control_fd: int, warm_parser: bool) -> None:
    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when we stop
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    warm_up(parser=warm_parser)  # every child inherits an imported, warmed-up math-verify
    zygote_pid = os.getpid()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 1)
        except OSError:
            return
        if not message:
            return
        timeout_s, memory_limit_mb = struct.unpack("dq", message)
        pid = os.fork()
        if pid == 0:  # the child
            control.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            die_with_parent()
            if os.getppid() != zygote_pid:  # the zygote died before prctl took effect
                os._exit(1)
            from multiprocessing.connection import Connection

            try:
                child_main(Connection(fds[0]), timeout_s or None, memory_limit_mb or None)
            finally:
                os._exit(0)
        os.close(fds[0])
        try:
            control.sendall(struct.pack("q", pid))
        except OSError:  # the owner is gone
            return


if __name__ == "__main__":
    main(int(sys.argv[1]), warm_parser=sys.argv[2:] != ["--no-warm-parser"])
    os._exit(0)  # nothing to flush; skip a slow interpreter teardown of sympy
