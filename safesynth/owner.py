"""Who holds a piece of restricted state: a ledger reservation, a private work directory, a staging directory.

An :class:`Owner` names a process by host, the kernel's boot id, its pid namespace, its pid and its start
time, so that a crashed run can be told apart from a running one *on the same machine*: ``dead`` only when
provably so (the pid is gone, or was recycled by a newer process). On another machine or container nothing
can be known (``unknown``), and nothing is cleaned up on a guess.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Owner"]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``); guards against pid reuse."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat.rpartition(")")[2].split()[19])  # field 22; the name before ")" may hold spaces
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """The process that holds an attempt: enough to tell, on the same machine, whether it still runs.

    ``host``, ``boot`` (the kernel's boot id) and ``pidns`` (the pid namespace) together say whether a pid
    means the same thing here; ``start`` guards against a recycled pid; ``token`` is unique per
    reservation call (a retried reserve finds its own row by it).
    """

    host: str
    boot: str | None
    pidns: str | None
    pid: int
    start: int | None
    token: str

    @classmethod
    def current(cls) -> Owner:
        """This process, with a fresh token."""
        pid = os.getpid()
        return cls(host=socket.gethostname(), boot=_read("/proc/sys/kernel/random/boot_id"),
                   pidns=_pid_namespace(), pid=pid, start=_start_ticks(pid), token=uuid.uuid4().hex)

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "boot": self.boot, "pidns": self.pidns, "pid": self.pid,
                           "start": self.start, "token": self.token}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Owner | None:
        """The stored owner, or ``None`` for rows written before owners were recorded (or unreadable)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(host=str(data["host"]), boot=data.get("boot"), pidns=data.get("pidns"),
                       pid=int(data["pid"]), start=data.get("start"), token=str(data.get("token", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def state(self) -> Literal["alive", "dead", "unknown"]:
        """``dead`` only when provably so: same machine and pid namespace, and the pid is gone or reused."""
        here = Owner.current()
        if (self.host, self.boot, self.pidns) != (here.host, here.boot, here.pidns):
            return "unknown"  # another machine or container: its pids mean nothing here
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return "dead"
        except PermissionError:
            pass  # exists, owned by another user
        if self.start is not None:
            now = _start_ticks(self.pid)
            if now is not None and now != self.start:
                return "dead"  # the pid was recycled by a newer process
        return "alive"

    def file_token(self) -> str:
        """A file-name-safe form without dots in its parts: ``<host>.<pid>.<start>``."""
        host = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.host)[:48]
        return f"{host}.{self.pid}.{self.start or 0}"

    @classmethod
    def from_file_token(cls, token: str) -> Owner | None:
        """The owner named by :meth:`file_token`, on this machine (its boot id and pid namespace)."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        here = cls.current()
        if parts[0] != here.file_token().split(".")[0]:
            return None  # another host: nothing can be known
        return cls(host=here.host, boot=here.boot, pidns=here.pidns, pid=int(parts[1]),
                   start=int(parts[2]) or None, token="")
