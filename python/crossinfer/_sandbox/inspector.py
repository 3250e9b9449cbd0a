"""The inspector side: a zygote that imports the libraries once and forks one fresh process
per inspection (forked from the service at start; a replacement is a fresh interpreter
started through ``bootstrap``).

The zygote fences itself first (``fences.enter_zygote``); it has the model roots as inherited
descriptors, and never opens a model: for each inspection the service hands it, over a Unix socket,
the four pipe ends of a new inspector (requests, answers, output, exit status); it forks, and
the child (its own session, hard limits, stdout and stderr on the output pipe) serves exactly
one request and exits. A fork of a process that has only imported libraries costs
milliseconds; an inspection never sees what another one left, because each starts from the
zygote's clean state and dies after its answer.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional

from crossinfer._sandbox.settings import ALLOCATION_FAILED, Confinement, Limits, unplain

if TYPE_CHECKING:
    from crossinfer import _policy

def _die_with_parent() -> None:
    # Exit as soon as the service is gone, however it went, even while a model hangs. (Not
    # PR_SET_PDEATHSIG: it fires when the parent *thread* that started the child exits.)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _refused_allocation(error: BaseException) -> Optional[str]:
    """``"python"`` if ``error`` came of a MemoryError, ``"library"`` if of an allocation a
    library reports refused, else None. The library's error arrives wrapped: crossinfer
    reports a model that does not load, or fails its probe batch, as its own error."""
    seen: set[int] = set()
    found = None
    cause: Optional[BaseException] = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, MemoryError):
            return "python"
        if ALLOCATION_FAILED.search(str(cause)):
            found = "library"
        cause = cause.__cause__ or cause.__context__
    return found


def _chain_text(error: BaseException) -> str:
    texts, seen, cause = [], set(), error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return " | ".join(texts)


def bootstrap(spec, package, config_json: str, control_fd: int) -> int:
    """A fresh zygote (``processes._BOOTSTRAP``): fenced first, then crossinfer's package
    code runs, then the zygote's life."""
    from crossinfer._sandbox import fences as _sandbox

    config = json.loads(config_json)
    policy, limits = Confinement(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in config["policy"].items()}), Limits(
        **config["limits"])
    try:
        _sandbox.enter_zygote(policy.held, tuple(policy.model_roots) + tuple(
            policy.trusted_model_roots), policy.hidden, policy.network, policy.weak)
    except _sandbox.FenceError as e:
        os.write(1, json.dumps({"ready": False, "error": str(e)}).encode() + b"\n")
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec.loader.exec_module(package)
    return run_zygote(policy, limits, control_fd, fenced=True)


def run_zygote(policy: Confinement, limits: Limits, control_fd: int,
               fenced: bool = False) -> int:
    """The zygote's life: fence itself (``fences.enter_zygote``), then stdout (fd 1) takes the
    ready line, stderr (fd 2) the log. Started with ``python -m``, or forked from the service
    once it has imported the same libraries (``processes.Zygote``): then the imports below are
    done (``fenced``: ``bootstrap`` has fenced it). A fence that does not hold is said on the
    ready line, and the zygote exits."""
    import resource

    from crossinfer._sandbox import fences as _sandbox

    ready = os.fdopen(os.dup(1), "wb")
    try:
        # (``fenced``: by the service's fork before it exec'd this interpreter.)
        skipped = [] if fenced else _sandbox.enter_zygote(
            policy.held, tuple(policy.model_roots) + tuple(policy.trusted_model_roots),
            policy.hidden, policy.network, policy.weak)
    except _sandbox.FenceError as e:
        ready.write(json.dumps({"ready": False, "error": str(e)}).encode() + b"\n")
        ready.flush()
        return 2
    _scrub_environment(policy.network)
    _die_with_parent()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from crossinfer import _policy, _repository

    # The service's allowlist, and its roots through the descriptors it opened at start-up
    # (never re-opened by name here: a renamed and re-created root is not the one the
    # operator named). No runner: the files are opened here.
    files = _policy.Policy(
        allowlist=tuple(policy.allow),
        repository=_repository.Repository(held=[tuple(h) for h in policy.held])
        if policy.held else _repository.Repository(
            policy.model_roots, policy.trusted_model_roots))
    from crossinfer import frameworks

    for plugin in frameworks.REGISTRY:
        if not plugin.warm:  # imported by the first inspection that needs it
            continue
        try:
            plugin.load()  # warm: imports cost seconds, once for every forked inspector
        except Exception:  # noqa: BLE001 - a missing framework fails when it is asked for
            pass
    if limits.memory_mb > 0:
        # The most any inspection may have (a big model's grown limits); each inspection lowers
        # it to its own before it reads the model (_inspect_once).
        cap = _vm_size() + limits.ceiling() * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    control = socket.socket(fileno=control_fd)
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    # What an inspector is inside, seen from one (forked as any other, asked nothing).
    seen = _probe_fences(policy)
    if "error" in seen:
        ready.write(json.dumps({"ready": False, "error": seen["error"]}).encode() + b"\n")
        ready.flush()
        return 2
    threading.Thread(target=_reap, args=(statuses, lock), daemon=True, name="reaper").start()
    ready.write(json.dumps({"ready": True, "fences": seen.get("fences", {}),
                            "skipped": skipped + seen.get("skipped", [])}).encode() + b"\n")
    ready.flush()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 4)
        except OSError:
            os._exit(0)
        if not message or len(fds) != 4:
            os._exit(0)  # the service is gone (or speaks nonsense)
        request_r, answer_w, output_w, status_w = fds
        with lock:
            pid = os.fork()
            if pid == 0:
                try:
                    control.close()
                    ready.close()
                    os.close(status_w)
                    _fenced(policy, answer_w, output_w,
                            lambda: _inspect_once(request_r, answer_w, output_w, limits, files))
                finally:
                    os._exit(1)
            statuses[pid] = status_w
        for fd in (request_r, answer_w, output_w):
            os.close(fd)
        control.sendall(f"{pid}\n".encode())


_KEPT_ENVIRONMENT = ("PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHASHSEED",
                     "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "TF_CPP_MIN_LOG_LEVEL")
# With a gs:// root the inspectors have the network, and Cloud Storage's clients find their
# endpoint, project and proxies here (not credentials: a key file is outside the sandbox's
# tree; on Google Cloud the metadata server serves them).
_KEPT_FOR_NETWORK = ("STORAGE_EMULATOR_HOST", "NO_GCE_CHECK", "GOOGLE_CLOUD_PROJECT",
                     "GCE_METADATA_HOST", "GCE_METADATA_IP", "HTTPS_PROXY", "HTTP_PROXY",
                     "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")


def kept_environment(network: bool) -> dict:
    """What of this process's environment an inspector keeps."""
    names = _KEPT_ENVIRONMENT + (_KEPT_FOR_NETWORK if network else ())
    return {k: v for k, v in os.environ.items() if k in names or k.startswith("LC_")}


def _scrub_environment(network: bool) -> None:
    """The service's environment (credentials, tokens) stays the service's: a fork has a copy
    of it, in os.environ and in the block /proc/<pid>/environ shows, both cleared here."""
    import ctypes

    kept = kept_environment(network)
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
    except (OSError, IndexError, ValueError):
        start = end = 0
    import tempfile

    from crossinfer._sandbox.fences import SCRATCH

    os.environ.clear()
    os.environ.update(kept, HOME=SCRATCH, TMPDIR=SCRATCH)
    tempfile.tempdir = None  # found again, under TMPDIR
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)


def _probe_fences(policy: Confinement) -> dict:
    """Fork one inspector as for a request; it answers what it is inside."""
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(out_r)

            def report() -> None:
                from crossinfer._sandbox import fences as _sandbox

                os.write(w, json.dumps({"fences": _sandbox.fences()}).encode() + b"\n")

            _fenced(policy, w, out_w, report)
        finally:
            os._exit(1)
    os.close(w)
    os.close(out_w)
    with os.fdopen(r, "rb") as f:
        line = f.readline(65536)
    with os.fdopen(out_r, "rb") as f:
        said = f.read(4096).decode("utf-8", "replace")
    os.waitpid(pid, 0)
    try:
        answer = json.loads(line)
    except ValueError:
        return {"error": f"the probe inspector gave no answer: {said!r}"[:600]}
    if "error" in answer:
        return {"error": answer["error"]["message"]}
    return answer


def _fenced(policy: Confinement, answer_w: int, output_w: int, work) -> None:
    """In the zygote's fresh child: new PID and mount namespaces whose init (its child) has
    its own /proc and /tmp; the init's child drops every capability, loads the seccomp
    filter and does ``work``. When the init exits, the kernel ends all that was started in
    that namespace. Exit statuses are passed up unchanged (a signal as that signal)."""
    import signal as _signal

    from crossinfer._sandbox import fences as _sandbox

    os.setsid()  # the service ends this process's group when the inspection is over
    _sandbox.die_with_parent()
    try:
        in_namespace = _sandbox.enter_inspector_namespace(policy.weak)
        if in_namespace:
            init = os.fork()
            if init == 0:
                _sandbox.die_with_parent()
                _sandbox.mount_own_proc(policy.weak)
                worker = os.fork()
                if worker == 0:
                    _sandbox.die_with_parent()
                    _sandbox.lock_down(policy.network, policy.weak)
                    work()
                    os._exit(0)
                for fd in (answer_w, output_w):
                    os.close(fd)
                os._exit(_passed_up(os.waitpid(worker, 0)[1], init=True))
        else:
            _sandbox.lock_down(policy.network, policy.weak)
            work()
            os._exit(0)
    except _sandbox.FenceError as e:
        os.write(answer_w, json.dumps({"error": {"type": "ConfigurationError",
                                                 "message": str(e)}}).encode() + b"\n")
        os._exit(4)
    for fd in (answer_w, output_w):
        os.close(fd)
    code = _passed_up(os.waitpid(init, 0)[1], init=False)
    if code < 0:
        _signal.signal(-code, _signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _passed_up(status: int, init: bool) -> int:
    # The init of a PID namespace cannot die of a signal it sends itself: it exits with
    # 128 + the signal, which its parent turns back into the signal.
    code = os.waitstatus_to_exitcode(status)
    if init:
        return 128 - code if code < 0 else code
    return -(code - 128) if code > 128 else code


def _reap(statuses: dict, lock: threading.Lock) -> None:
    # Each inspector's exit status goes to the service over its own status pipe.
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.05)
            continue
        with lock:
            fd = statuses.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
            finally:
                os.close(fd)


def _inspect_once(request_r: int, answer_w: int, output_w: int, limits: Limits,
                  files: "_policy.Policy") -> None:
    """In a fresh fork: its own session, its limits, one request, one answer."""
    import resource

    from crossinfer import _inspect
    from crossinfer._errors import ConfigurationError, CrossinferError, ModelLoadError

    if os.getsid(0) != os.getpid():  # (without a PID namespace it leads its session already)
        os.setsid()
    os.dup2(output_w, 1)
    os.dup2(output_w, 2)
    os.close(output_w)
    requests = os.fdopen(request_r, "rb")
    answers = os.fdopen(answer_w, "wb")
    log = logging.getLogger("crossinfer.sandbox.inspector")
    for line in requests:
        try:
            request = json.loads(line)
            # This inspection's limits, grown by the service with the model's size; the
            # zygote's (a small model's) if none came.
            own = request.get("limits")
            own = Limits(**own) if isinstance(own, dict) else limits
        except Exception:  # noqa: BLE001 - a malformed request: the small model's limits
            request, own = None, limits
        # Both hard fixed before anything of the model is read, so its code cannot raise them.
        # CPU: this inspection's budget (a fork starts at nothing used).
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        # (One second above the soft limit: SIGXCPU first, so the parent can say which limit.)
        resource.setrlimit(resource.RLIMIT_CPU,
                           (spent + own.cpu_seconds, spent + own.cpu_seconds + 1))
        if own.memory_mb > 0:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            cap = _vm_size() + own.memory_mb * 1024 * 1024
            if hard != resource.RLIM_INFINITY:
                cap = min(cap, hard)  # never above the zygote's ceiling
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            if request is None:
                raise ValueError("malformed inspection request")
            answer = {"signature": _inspect.describe_kwargs(
                unplain(request["kwargs"]), request["key"], files)}
        except MemoryError:
            os.write(2, b"model inspection hit the memory limit\n")
            os._exit(3)
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer
            log.warning("model inspection failed: %s: %s", type(e).__name__, e)
            refused = _refused_allocation(e)
            if refused == "library":
                # The service cuts each line of ours: say first what was refused.
                found = ALLOCATION_FAILED.search(_chain_text(e))
                if found:
                    text = _chain_text(e)
                    log.warning("allocation refused: %s", text[found.start():found.start() + 120])
            if refused == "python":
                # As above, wrapped in another error: whatever state running out of memory
                # left, this process is not asked again.
                os.write(2, b"model inspection hit the memory limit\n")
                os._exit(3)
            if refused == "library":
                # One allocation was refused whole (an onnxruntime or torch buffer): answered,
                # the child goes on.
                kind, message = "MemoryLimit", ""
            elif isinstance(e, ModelLoadError):
                kind, message = "ModelLoadError", getattr(e, "public", None) or str(e)
            elif isinstance(e, ConfigurationError):
                kind, message = type(e).__name__, str(e)
                if kind not in ("CallableNotAllowedError", "ConfigurationError"):
                    kind = "ConfigurationError"
            elif isinstance(e, CrossinferError):
                kind, message = "ModelLoadError", str(e)
            else:
                kind, message = "ModelLoadError", (
                    f"the model could not be inspected ({type(e).__name__}); the service "
                    "log has the details")
            answer = {"error": {"type": kind, "message": message}}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()
        break  # one inspection per process

