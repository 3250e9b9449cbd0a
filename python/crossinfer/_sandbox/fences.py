"""The fences around a model inspector, set up in-process (the zygote is a fork of the service,
so an exec-based sandbox such as bubblewrap does not fit), and sweeping up after one.

The zygote (``enter_zygote``, before it runs anything of its own):

- its own session, ``no_new_privs``, not dumpable (no ptrace or ``/proc/<pid>/mem`` of it by
  its own uid);
- new mount, network (unless gs:// roots need it), IPC and UTS namespaces, and a minimal root
  (``pivot_root``): the Python installation, ``/usr``, ``/etc`` and the model roots read-only,
  a few device nodes, an empty scratch ``/tmp``; nothing of the service's (its sockets, its
  working directory) exists there;
- a user namespace mapped to one unprivileged id: the service's own, or, when the service is
  root, ``nobody`` (the zygote drops to it first). It is root only inside that namespace.

Each inspector (``enter_inspector``, in ``inspector``) adds its own PID namespace (the zygote's
child is its init: when it exits, the kernel kills all that the inspection started), its own
``/proc`` and ``/tmp``, then drops every capability and loads a seccomp filter (libseccomp)
that refuses ptrace, ``process_vm_*``, namespace and mount calls, kernel keys, BPF, perf,
module and kexec calls, and every socket family but AF_UNIX (and IP where the roots are gs://).

Every step either holds or raises ``FenceError`` naming the kernel feature that is missing and
the flag that accepts the risk; only then (``weak``) is a failed step skipped and reported.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, Optional

from crossinfer._errors import ConfigurationError

WEAK_FLAG = "--allow-weak-sandbox"
WEAK_ENV = "CROSSINFER_ALLOW_WEAK_SANDBOX"
SCRATCH = "/scratch"  # an inspector's own empty, writable directory
SANDBOX_UID = 65534  # nobody: whom inspectors run as when the service is root

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME = 0x4000, 1 << 18, 1 << 21
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_CAPSET = 126

_libc = ctypes.CDLL(None, use_errno=True)


class FenceError(ConfigurationError):
    """A fence could not be set up: inspecting untrusted files would be unsafe."""

    def __init__(self, feature: str, detail: str = "") -> None:
        self.feature = feature
        super().__init__(
            f"the model inspector's sandbox needs {feature}, which this kernel or container "
            f"refuses{f' ({detail})' if detail else ''}; allow it (e.g. run the container "
            f"with user namespaces and seccomp permitted), or start the service with "
            f"{WEAK_FLAG} (or {WEAK_ENV}=1) to accept inspecting models without it")


    @classmethod
    def said(cls, message: str) -> "FenceError":
        """The error as a zygote reported it (its message already complete)."""
        error = cls.__new__(cls)
        ConfigurationError.__init__(error, message)
        error.feature = ""
        return error


def weak_allowed() -> bool:
    return os.environ.get(WEAK_ENV, "") not in ("", "0")


def _check(result: int, feature: str) -> None:
    if result != 0:
        raise FenceError(feature, os.strerror(ctypes.get_errno()))


def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int,
           data: Optional[str], feature: str) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), feature)


def become_subreaper() -> bool:
    """Orphans of this process's descendants become its children (so ``sweep`` finds them)."""
    return _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def not_dumpable() -> None:
    """No process of this uid may ptrace this one or open its ``/proc/<pid>/mem`` (the
    service, and the zygote: what was in memory at the fork). Its own /proc entries stay
    readable to itself."""
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


class _Steps:
    """Runs fence steps: a failure raises, or, with ``weak``, is noted and skipped."""

    def __init__(self, weak: bool) -> None:
        self.weak, self.skipped = weak, []

    def __call__(self, feature: str, action: Any, *args: Any) -> bool:
        try:
            action(*args)
            return True
        except (FenceError, OSError) as e:
            # The details (paths) go to the service log only; the message names the feature.
            logging.getLogger("crossinfer.sandbox.fences").warning(
                "fence step %r failed: %r", feature, e)
            if not self.weak:
                if isinstance(e, FenceError):
                    raise
                raise FenceError(feature, e.strerror or str(e)) from None
            self.skipped.append(feature)
            return False


def enter_zygote(roots: Sequence[tuple], paths: Sequence[str], hidden: Sequence[str],
                 network: bool, weak: bool = False) -> list[str]:
    """Fence this (forked, single-threaded) process as the inspectors' zygote; return the
    steps skipped (only with ``weak``). ``roots``: the held model roots (prefix, trusted,
    alias, fd), whose descriptors are re-opened inside; ``paths``: other local roots by name
    (read-only in the tree); ``hidden``: directories covered if they fall inside the tree."""
    step = _Steps(weak)
    try:
        import pyseccomp  # noqa: F401 - loaded while the installation is reachable
    except ImportError:
        pass  # (the inspector's filter step says so)
    os.setsid()
    step("no_new_privs (prctl)", lambda: _check(
        _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs (prctl)"))
    not_dumpable()
    uid = os.getuid()
    others = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS | (0 if network else _CLONE_NEWNET)
    if uid == 0:
        # Root builds the tree with its own rights, then leaves them for nobody's: a user
        # namespace made by nobody gives capabilities over that namespace only.
        built = step("mount namespaces (unshare)", lambda: _check(
            _libc.unshare(others), "mount and network namespaces (unshare)")) and step(
            "a private minimal root (mount, pivot_root)", _build_root, roots, paths, hidden)
        if built:
            step("a drop to an unprivileged uid (setresuid)", _drop_to, SANDBOX_UID,
                 SANDBOX_UID)
        else:  # (weak) outside the tree, nobody may not reach the Python installation
            step.skipped.append("a drop to an unprivileged uid (setresuid)")
        step("user namespaces (unshare CLONE_NEWUSER)", _user_namespace, 0)
    else:
        if step("user namespaces (unshare CLONE_NEWUSER)", _user_namespace, others):
            step("a private minimal root (mount, pivot_root)", _build_root, roots, paths,
                 hidden)
    return step.skipped


def _drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _user_namespace(others: int) -> None:
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(_CLONE_NEWUSER | others), "user namespaces (unshare CLONE_NEWUSER)")
    # Its /proc files belong to this uid only while it is dumpable: for these three writes.
    _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                           ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    finally:
        not_dumpable()


def _python_paths() -> list[str]:
    # The installation and the entries of sys.path (PYTHONPATH, site-packages: where an
    # allowed module of the user's is found later), but not the service's working directory
    # (``python -m`` puts it first) unless code came from there.
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    cwd = os.path.realpath(os.getcwd())
    entries = sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)},
                     key=len, reverse=True)
    found.update(e for e in entries if e != cwd)
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name == "__main__" or not isinstance(path, str):
            continue
        path = os.path.realpath(path)
        if path.startswith(cwd.rstrip("/") + "/"):
            found.add(cwd)  # code came from the working directory
        elif "." not in name and not any(path.startswith(e.rstrip("/") + "/")
                                         for e in entries):
            # A top-level package found by an import hook, not through sys.path (an
            # editable install): the directory that holds it.
            top = os.path.dirname(path)
            found.add(os.path.dirname(top) if path.endswith("/__init__.py") else top)
    return sorted({os.path.realpath(p) for p in found if os.path.isabs(p)})


def _locked_flags(path: str) -> int:
    # A bind mount in a user namespace keeps the flags its source had (or remount fails).
    have = os.statvfs(path).f_flag
    flags = 0
    for st_bit, ms_bit in ((os.ST_NOSUID, _MS_NOSUID), (os.ST_NODEV, _MS_NODEV),
                           (os.ST_NOEXEC, _MS_NOEXEC), (os.ST_NOATIME, _MS_NOATIME),
                           (os.ST_NODIRATIME, _MS_NODIRATIME), (os.ST_RELATIME, _MS_RELATIME)):
        if have & st_bit:
            flags |= ms_bit
    return flags


def _bind(source: str, root: str, target: str, rdonly: bool = True,
          recursive: bool = False) -> None:
    inside = root + target
    if os.path.isdir(source):
        os.makedirs(inside, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(inside), exist_ok=True)
        if not os.path.exists(inside):
            open(inside, "w").close()
    _mount(source, inside, None, _MS_BIND | (_MS_REC if recursive else 0), None,
           "bind mounts")
    if rdonly:
        _mount(None, inside, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID
               | _MS_NODEV | _locked_flags(inside), None, "read-only bind mounts")


def _build_root(roots: Sequence[tuple], paths: Sequence[str], hidden: Sequence[str]) -> None:
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE, None, "private mounts")
    # Held roots: the directories the service opened at start, no other (a root renamed and
    # re-created since is refused); bound where the service sees them.
    held = []
    for prefix, _trusted, alias, fd in roots:
        if fd < 0:
            continue
        path = prefix.rstrip("/") or "/"
        mine, there = os.fstat(fd), os.stat(path)
        if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
            raise FenceError("the model roots as they were at start",
                             "a root was replaced since")
        held.append((path, alias, fd))
    root = os.getcwd()
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755",
           "tmpfs mounts")
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink("/" + name):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink("/" + name), f"{root}/{name}")
    bound: list[str] = []
    wanted = ["/usr", "/etc"] + _python_paths() + [p for p, _, _ in held] + [
        os.path.realpath(p) for p in paths if os.path.isabs(p) and os.path.isdir(p)]
    for name in ("bin", "sbin", "lib", "lib64"):
        if os.path.isdir("/" + name) and not os.path.islink("/" + name):
            wanted.append("/" + name)
    for path in sorted(set(wanted)):
        if path == "/" or any(path.startswith(b.rstrip("/") + "/") for b in bound):
            continue  # inside a tree bound already
        _bind(path, root, path)
        bound.append(path)
    for path, alias, _fd in held:
        alias = (alias or "").rstrip("/")
        if alias and alias != path and os.path.isabs(alias) and not os.path.lexists(
                root + alias):
            os.makedirs(os.path.dirname(root + alias), exist_ok=True)
            os.symlink(path, root + alias)
    if os.path.isdir("/sys/devices/system/cpu"):  # what the libraries read of the CPUs
        _bind("/sys/devices/system/cpu", root, "/sys/devices/system/cpu")
    os.makedirs(root + "/dev", exist_ok=True)
    _mount("tmpfs", root + "/dev", "tmpfs", _MS_NOSUID | _MS_NOEXEC, "size=64k,mode=0755",
           "tmpfs mounts")
    for node in ("null", "zero", "full", "random", "urandom"):
        _bind("/dev/" + node, root, "/dev/" + node, rdonly=False)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{root}/dev/{name}")
    os.makedirs(root + "/dev/shm", exist_ok=True)
    _mount("tmpfs", root + "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
           "size=1m,mode=1777", "tmpfs mounts")
    # The service's /proc, for the zygote (trusted code) and because a new /proc may be
    # mounted (each inspector's) only where one is visible; each inspector covers it.
    _bind("/proc", root, "/proc", rdonly=False, recursive=True)
    # The zygote's scratch (its libraries' imports may want one); each inspector mounts its
    # own over it, so none sees what another left.
    os.makedirs(root + SCRATCH, exist_ok=True)
    _mount("tmpfs", root + SCRATCH, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
           "size=16m,mode=1777", "tmpfs mounts")
    _mount(None, root, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV,
           None, "read-only mounts")
    os.chdir(root)
    _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", _MNT_DETACH), "unmounting the old root")
    os.chdir("/")
    for path, _alias, fd in held:
        # The same directory, reached inside the tree (its ``..`` ends at the new root).
        flags = os.O_RDONLY | os.O_DIRECTORY | (os.O_PATH if hasattr(os, "O_PATH") and (
            _fd_flags(fd) & os.O_PATH) else 0)
        new = os.open(path, flags)
        os.dup2(new, fd)
        os.close(new)
    for path in hidden:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                   "size=4k,mode=0500", "tmpfs mounts")


def _fd_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


# --- each inspector ------------------------------------------------------------------------

def enter_inspector_namespace(weak: bool = False) -> bool:
    """In the zygote's fresh child: new PID and mount namespaces for the next child (its
    init). Returns whether they hold."""
    step = _Steps(weak)
    return step("PID namespaces (unshare CLONE_NEWPID)", lambda: _check(
        _libc.unshare(_CLONE_NEWPID | _CLONE_NEWNS), "PID namespaces (unshare CLONE_NEWPID)"))


def die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def mount_own_proc(weak: bool = False) -> None:
    """In the init of the inspector's PID namespace: its own /proc, and an empty scratch
    directory (its working directory and TMPDIR) and /dev/shm, which die with it."""
    step = _Steps(weak)
    step("its own /proc (mount proc)", _mount, "proc", "/proc", "proc",
         _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None, "its own /proc (mount proc)")
    for path in (SCRATCH, "/dev/shm"):
        if os.path.isdir(path):
            step("an empty scratch directory (mount tmpfs)", _mount, "tmpfs", path, "tmpfs",
                 _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=256m,mode=0700", "tmpfs mounts")
    if os.path.isdir(SCRATCH):
        os.chdir(SCRATCH)
        os.environ["TMPDIR"] = SCRATCH


def lock_down(network: bool, weak: bool = False) -> None:
    """The inspection's own process, last: no capability, and the seccomp filter."""
    step = _Steps(weak)
    step("dropping capabilities (capset)", _drop_capabilities)
    step("seccomp filters (libseccomp, pyseccomp)", _seccomp, network)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:
                break  # past the last capability this kernel has
            if ctypes.get_errno() == errno.EPERM and _no_capabilities():
                break  # none to use (an unprivileged uid, no user namespace of its own)
            raise FenceError("dropping capabilities (prctl PR_CAPBSET_DROP)",
                             os.strerror(ctypes.get_errno()))
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), data), "dropping capabilities "
           "(capset)")


def _no_capabilities() -> bool:
    with open("/proc/self/status") as f:
        held = {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
    return held.get("CapEff") == held.get("CapPrm") == "0000000000000000"


_DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "setns", "unshare", "mount", "umount2",
    "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
    "fspick", "mount_setattr", "kexec_load", "kexec_file_load", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "userfaultfd", "personality", "acct",
    "swapon", "swapoff", "reboot", "settimeofday", "clock_settime", "quotactl", "syslog",
    "lookup_dcookie", "vhangup", "iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl",
    "nfsservctl", "pidfd_getfd", "kcmp", "io_uring_setup",
)


def _seccomp(network: bool) -> None:
    try:
        import pyseccomp as seccomp
    except ImportError:
        raise FenceError("seccomp filters (libseccomp, pyseccomp)",
                         "the pyseccomp package is not installed") from None
    try:
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in _DENIED:
            try:
                f.add_rule(seccomp.ERRNO(errno.EPERM), name)
            except (OSError, ValueError, RuntimeError):
                pass  # not a system call on this architecture
        # New namespaces through clone: refused; clone3 (its flags sit in memory, where a
        # filter cannot read them) answers "not implemented", and the C library falls back.
        for flag in (_CLONE_NEWUSER, _CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC,
                     _CLONE_NEWPID, _CLONE_NEWNET, 0x02000000):  # .., CLONE_NEWCGROUP
            f.add_rule(seccomp.ERRNO(errno.EPERM), "clone",
                       seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        allowed = {1} | ({2, 10} if network else set())  # AF_UNIX; AF_INET(6) for gs://
        for family in range(64):
            if family not in allowed:
                f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                           seccomp.Arg(0, seccomp.EQ, family))
        f.load()
    except FenceError:
        raise
    except Exception as e:  # noqa: BLE001 - libseccomp missing or the kernel refuses
        raise FenceError("seccomp filters (libseccomp, pyseccomp)", str(e)[:200]) from None


def fences() -> dict[str, bool]:
    """Which fences this process is inside (an inspector reports it)."""
    def status(key: str) -> str:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return ""

    def uid_map() -> str:
        try:
            with open("/proc/self/uid_map") as f:
                return f.read().split("\n")[0]
        except OSError:
            return ""

    outside = uid_map().split()
    return {
        # (Its session's leader, outside its PID namespace, shows as 0.)
        "own session": os.getsid(0) in (0, os.getpid()),
        "no_new_privs": status("NoNewPrivs") == "1",
        "user namespace": len(outside) == 3 and outside[1] != "0" and outside != [
            "0", "0", "4294967295"],
        "pid namespace": os.getpid() <= 2 and os.path.exists("/proc/1"),
        "no capabilities": status("CapEff") == "0000000000000000" and status(
            "CapBnd") == "0000000000000000",
        "seccomp": status("Seccomp") == "2",
        "minimal root": not os.path.isdir("/home") and not os.path.isdir("/var") and (
            os.getcwd() == SCRATCH),
        "network namespace": _no_interfaces(),
    }


def _no_interfaces() -> bool:
    try:
        with open("/proc/self/net/dev") as f:
            names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
        return names in ([], ["lo"])
    except OSError:
        return True


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
