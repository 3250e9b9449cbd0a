"""What the kernel offers to fence in a model inspector, and sweeping up after one.

An inspector opens model files, and a pickle or TorchScript file from a trusted root runs its
code there by design. So each inspector is started (``preexec``) in its own session (one
``killpg`` ends it and whatever it started in that session), with ``no_new_privs``, and, when
the kernel allows, in new mount and network namespaces (and a new user namespace when the
service is not root): no network at all, and the worker pool's socket directory covered by an
empty tmpfs, so code in an inspector cannot reach the pool or the service's port. Whatever an
inspector started that left its session is reparented to the service (a child subreaper) and
killed when the inspector is (``sweep``).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Sequence

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> bool:
    """Orphans of this process's descendants become its children (so ``sweep`` finds them)."""
    return _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def preexec(hidden: Sequence[str], network: bool) -> None:
    """Run in the forked child before exec; raises nothing (an unavailable fence is skipped,
    and ``probe`` reports which are in force)."""
    os.setsid()
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWNS | (0 if network else _CLONE_NEWNET)
    if uid != 0:
        flags |= _CLONE_NEWUSER
    if _libc.unshare(flags) != 0:
        return
    if uid != 0:
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                               ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError:
            return
    if _libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return
    for path in hidden:
        _libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                    b"size=4k,mode=0500")


def fences() -> dict[str, bool]:
    """Which fences this process is inside (the inspector reports it when ready)."""
    parent = os.getppid()

    def differs(kind: str) -> bool:
        try:
            return os.readlink(f"/proc/self/ns/{kind}") != os.readlink(
                f"/proc/{parent}/ns/{kind}")
        except OSError:
            return False

    try:
        with open("/proc/self/status") as f:
            nnp = any(line.split() == ["NoNewPrivs:", "1"] for line in f)
    except OSError:
        nnp = False
    return {"own session": os.getsid(0) == os.getpid(), "no_new_privs": nnp,
            "mount namespace": differs("mnt"), "network namespace": differs("net"),
            "user namespace": differs("user")}


def kill_group(pid: int) -> None:
    """SIGKILL the session/process group ``pid`` leads (an inspector and what it started)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def sweep(known: set[int]) -> list[int]:
    """Kill and reap this process's children that are not ``known`` and left the service's
    session: descendants of an inspector that escaped its group, reparented here."""
    mine, me = os.getsid(0), os.getpid()
    killed = []
    for _ in range(8):  # their own children are reparented here as they die
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in known:
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields: state, ppid, pgrp, session, ...
            if int(fields[1]) == me and int(fields[3]) != mine:
                found.append(int(entry))
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            killed.append(pid)
    return killed
