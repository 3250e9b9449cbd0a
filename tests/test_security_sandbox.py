"""Code in an inspector stays there: a trusted pickle (code runs there by design) tries to
outlive the inspection, lift its limits, reach the service, the zygote, the worker pool or the
service's port, forge service log lines, and change what later requests from other clients
get. Every test runs twice: with the service as root (as in most containers) and as an
unprivileged user (``sandbox_user``; scripts/setup.sh creates it where the machine allows)."""

from __future__ import annotations

import ast
import os
import re
import secrets
import signal
import string
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from tests._security_helpers import (  # noqa: F401 - channel: a fixture (of this service)
    channel,
    alive, code_pickle, expand, healthy, make_place, request, small_onnx, start, wait_until)
from tests._service_helpers import write_sklearn_model

pytestmark = pytest.mark.timeout(300)

SANDBOX_TEST_USER = "crossinfer-test"
_SECRET = "CROSSINFER_TEST_SECRET"


def sandbox_user() -> Optional[str]:
    """The unprivileged user the service runs as in the second variant, if it can: it exists,
    and this process (root) can start a process as it that runs this Python."""
    import pwd

    if os.getuid() != 0:
        return None  # the tests already run unprivileged: the first variant is that one
    try:
        pwd.getpwnam(SANDBOX_TEST_USER)
    except KeyError:
        return None
    return SANDBOX_TEST_USER


@pytest.fixture(scope="module", params=["root", "unprivileged"])
def mode(request) -> tuple[str, Optional[str]]:
    if request.param == "root":
        if os.getuid() != 0:
            pytest.skip("the tests do not run as root, so the service cannot")
        return "root", None
    user = sandbox_user()
    if user is None:
        pytest.skip(f"no user {SANDBOX_TEST_USER!r} to run the service as (scripts/setup.sh "
                    "creates it when run as root; without root there is no other user to be)"
                    if os.getuid() == 0 else "the root variant is this one")
    return "unprivileged", user


@pytest.fixture(scope="module")
def place(tmp_path_factory, mode):
    if mode[1] is None:
        path = make_place(tmp_path_factory.mktemp(f"sandbox-{mode[0]}"))
    else:
        # The service's user reads the roots and writes its log there: a directory of its
        # own in the system's temporary directory (pytest's base directory is root's only).
        import pwd
        import shutil
        import tempfile

        path = make_place(Path(tempfile.mkdtemp(prefix="crossinfer-sandbox-")))
    write_sklearn_model(path / "roots" / "trusted" / "model.pkl")
    small_onnx(path / "roots" / "data" / "small.onnx")
    if mode[1] is not None:
        account = pwd.getpwnam(mode[1])
        subprocess.run(["chown", "-R", f"{account.pw_uid}:{account.pw_gid}", str(path)],
                       check=True)
    yield path
    if mode[1] is not None:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def service(place, mode):
    svc = start(place, user=mode[1], env={_SECRET: "s3cr3t-" + secrets.token_hex(8)})
    yield svc
    svc.stop()


def _pool_path(channel, place) -> str:
    response = expand(channel, request(model_uri=str(place / "roots/trusted/model.pkl")))
    for env in response.components.environments.values():
        if env.urn == common_urns.environments.EXTERNAL.urn:
            return beam_runner_api_pb2.ExternalPayload.FromString(env.payload).endpoint.url
    raise AssertionError("no EXTERNAL environment")


# The inspector-reach probes of the third audit, from a pickle in the trusted root. Each prints
# "PROBE <name> <REACHED|failed...>"; the fork chain is judged from outside.
_PROBES = string.Template(r"""
import ctypes, os, resource, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
svc, zygote = $svc, $zygote
def probe(name, fn):
    try:
        said = "REACHED" if fn() else "failed"
    except Exception as e:
        said = "failed:" + type(e).__name__
    print("PROBE", name, said, flush=True)
def environ():
    seen = repr(dict(os.environ)).encode()
    for path in ("/proc/self/environ", "/proc/%d/environ" % svc):
        try:
            seen += open(path, "rb").read()
        except OSError:
            pass
    return b"$secret" in seen
def mem_read():
    start = int(open("/proc/%d/maps" % svc).readline().split("-")[0], 16)
    with open("/proc/%d/mem" % svc, "rb") as f:
        f.seek(start)
        return len(f.read(16)) == 16
def opened(path, how):
    open(path, how).close()
    return True
def pool():  # the worker pool listens on loopback TCP (its address: host:port)
    host, _, number = "$pool".rpartition(":")
    s = socket.socket()
    s.settimeout(2)
    s.connect((host, int(number)))
    return True
def setns():
    fd = os.open("/proc/%d/ns/net" % svc, os.O_RDONLY)
    return libc.setns(fd, 0x40000000) == 0
def outside():
    open("$outside", "w").write("written from an inspector")
    return True
def chain():
    if os.fork() == 0:
        os.setsid()
        for _ in range(200):  # a new process every 50 ms, each parent gone: 10 s in all
            libc.prctl(15, b"$chain", 0, 0, 0)
            if os.fork() != 0:
                os._exit(0)
            time.sleep(0.05)
        os._exit(0)
    return False
def ptrace():
    for pid in (svc, zygote, 1):
        if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH; let go at once (PTRACE_DETACH)
            os.waitpid(pid, 0)
            libc.ptrace(17, pid, 0, 0)
            return True
    return False
def status(key):
    return [l.split(":", 1)[1].split() for l in open("/proc/self/status")
            if l.startswith(key + ":")][0]
def same_uid():
    for line in open("/proc/self/uid_map"):
        inside, outside_uid, count = map(int, line.split())
        if inside <= os.getuid() < inside + count:
            return os.getuid() - inside + outside_uid == $svc_uid
    return True
def cpu():
    resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return True
def port():
    t = socket.socket()
    t.settimeout(2)
    t.connect(("127.0.0.1", $port))
    return True
def held_sockets():
    return any(os.readlink("/proc/self/fd/" + fd).startswith("socket:")
               for fd in os.listdir("/proc/self/fd") if os.path.exists("/proc/self/fd/" + fd))
probe("environ", environ)
probe("service_mem_read", mem_read)
probe("service_mem_write", lambda: opened("/proc/%d/mem" % svc, "r+b"))
probe("zygote_mem_write", lambda: opened("/proc/%d/mem" % zygote, "r+b"))
probe("worker_pool", pool)
probe("setns_service_netns", setns)
probe("write_outside_roots", outside)
probe("fork_chain", chain)
probe("ptrace", ptrace)
probe("capabilities", lambda: int(status("CapEff")[0], 16) != 0)
probe("same_uid", same_uid)
probe("same_pid_namespace", lambda: os.readlink("/proc/self/ns/pid") == "$svc_pidns" or
      os.path.exists("/proc/%d" % svc))
probe("cpu_limit_raised", cpu)
probe("service_port", port)
probe("service_sockets_held", held_sockets)
probe("cwd_not_empty", lambda: os.listdir(".") != [])
sys.stderr.write("2026-01-01 00:00:00,000 INFO expansion_service: FORGED service line\n")
print("FORGED on stdout\r\n2026-01-01 00:00:00,000 INFO x: FORGED after a CR", flush=True)
""")

# The twelve of the audit; the unprivileged service's inspectors share its uid (only a
# setuid helper could give them another), which the others make of no use.
_AUDIT = ("environ", "service_mem_read", "service_mem_write", "zygote_mem_write",
          "worker_pool", "setns_service_netns", "write_outside_roots",
          "fork_chain", "ptrace", "capabilities", "same_uid", "same_pid_namespace")


def _named(comm: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                found.append(int(entry))
        except OSError:
            pass
    return found


def _said(log: str) -> list[str]:
    """What inspectors printed, unquoted (each relayed line is ``said: <repr>``)."""
    return [ast.literal_eval(m.group(1)) for m in re.finditer(
        r" said: ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")", log)]


def test_inspector_reach_probes_all_fail(channel, service, place, mode):
    pool = _pool_path(channel, place)
    (zygote,) = _children(service.proc.pid)
    chain = "chain" + secrets.token_hex(4)
    outside = place / "outside" / "written"
    probes = _PROBES.substitute(
        svc=service.proc.pid, zygote=zygote, pool=pool, port=service.port, chain=chain,
        outside=str(outside), secret=_secret(service), svc_uid=os.stat(
            f"/proc/{service.proc.pid}").st_uid,
        svc_pidns=os.readlink(f"/proc/{service.proc.pid}/ns/pid"))
    model = code_pickle(place / "roots" / "trusted" / "probes.pkl",
                        f"exec({probes!r}, {{'__name__': 'probes'}})")
    response = expand(channel, request(model_uri=str(model)))
    assert response.error == "", response.error
    assert wait_until(lambda: "PROBE cwd_not_empty" in "\n".join(_said(service.log())), 10)
    results = dict(line.split()[1:3] for line in _said(service.log())
                   if line.startswith("PROBE "))
    # The chain outlives neither the inspection nor a few more seconds of trying.
    time.sleep(1.0)
    survivors = [_named(chain) for _ in range(10) if not time.sleep(0.2)]
    results["fork_chain"] = "REACHED" if any(survivors) else results["fork_chain"]
    print(f"\ninspector-reach probes, service as {mode[0]}: {results}")
    expected_reached = {"same_uid"} if mode[0] == "unprivileged" else set()
    reached = {k for k, v in results.items() if v == "REACHED"}
    assert reached == expected_reached, results
    assert set(_AUDIT) <= set(results), results
    assert not outside.exists()
    # Printed lines reach the log quoted and marked, never as lines of the service's own.
    log = service.log()
    assert "FORGED" in log
    for line in log.splitlines():
        assert not line.startswith("2026-01-01"), line
        if "FORGED" in line:
            assert re.search(r"inspector \d+ said: ['\"]", line), line
    assert healthy(channel)


def _secret(service) -> str:
    return Path(f"/proc/{service.proc.pid}/environ").read_bytes().split(
        _SECRET.encode() + b"=")[1].split(b"\0")[0].decode()


def _group(user: Optional[str]) -> Optional[int]:
    import pwd

    return pwd.getpwnam(user).pw_gid if user else None


def test_a_fence_that_cannot_be_set_up_fails_closed(place, mode):
    """A kernel that refuses user namespaces (here: a seccomp filter on the service that
    makes unshare fail, as some container runtimes' do): the service refuses to start and
    says what is missing and which flag accepts the risk; with that flag it starts."""
    deny = place / "deny_unshare.py"
    deny.write_text(
        "import errno, os, sys, pyseccomp as s\n"
        "f = s.SyscallFilter(s.ALLOW)\n"
        "f.add_rule(s.ERRNO(errno.EPERM), 'unshare')\n"
        "f.load()\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'expansion_service'] + sys.argv[1:])\n")
    import sys as _sys

    if mode[1] is not None:
        import shutil

        shutil.chown(deny, mode[1])
        deny.chmod(0o644)
    proc = subprocess.run(
        [_sys.executable, str(deny), "--port", "0", "--trusted-model-root",
         str(place / "roots" / "trusted")], capture_output=True, text=True, timeout=120,
        user=mode[1], group=_group(mode[1]), extra_groups=[] if mode[1] else None,
        cwd=str(place))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    said = proc.stderr.splitlines()[-1]
    assert "namespaces (unshare" in said and "--allow-weak-sandbox" in said, said
    assert "Traceback" not in proc.stderr
    if mode[1] is not None:
        return  # (the flag works the same for both: checked once, as root)
    # With the flag, under the same refusal, it starts, says which fences it lacks, and serves.
    from tests._service_helpers import LISTENING

    weak = subprocess.Popen(
        [_sys.executable, str(deny), "--port", "0", "--allow-weak-sandbox",
         "--trusted-model-root", str(place / "roots" / "trusted")],
        stdout=subprocess.PIPE, stderr=open(place / "weak.log", "wb"), cwd=str(place))
    try:
        line = weak.stdout.readline().decode()
        address = LISTENING.search(line).group(1)
        import grpc

        with grpc.insecure_channel(address) as ch:
            assert expand(ch, request(model_uri=str(place / "roots/trusted/model.pkl"))
                          ).error == ""
        log = (place / "weak.log").read_text()
        assert "WEAK SANDBOX, skipped: " in log and "user namespaces" in log, log[-2000:]
    finally:
        weak.kill()
        weak.wait()
        weak.stdout.close()


_HIJACK = """
import crossinfer.frameworks._onnx as _o, crossinfer._inspect as _i
def _hijacked(*a, **k):
    print("HIJACKED a later request", flush=True)
    raise RuntimeError("HIJACKED")
_o.describe = _hijacked
_i.describe_kwargs = _hijacked
"""


def test_a_later_client_is_unaffected(service, place):
    model = code_pickle(place / "roots" / "trusted" / "hijack.pkl", _HIJACK)
    with service.channel() as first:
        assert expand(first, request(model_uri=str(model))).error == ""
    with service.channel() as later:
        for i in range(4):
            response = expand(later, request(
                framework="onnx", model_uri=str(place / "roots/data/small.onnx"),
                postprocess="regression", min_batch_size=2 + i))
            assert response.error == "", response.error
    assert "HIJACKED" not in service.log(), \
        "code from an earlier inspection ran for a later request"


_LINGER = string.Template("""
import ctypes, os, time
libc = ctypes.CDLL(None)
if os.fork() == 0:  # leaves the inspector's session
    os.setsid()
    libc.prctl(15, b"$name", 0, 0, 0)
    time.sleep(600)
if os.fork() == 0:  # stays in it
    libc.prctl(15, b"$name", 0, 0, 0)
    time.sleep(600)
time.sleep(60)
""")


def test_sigterm_kills_what_inspectors_started(place, mode):
    name = "linger" + secrets.token_hex(4)
    svc = start(place, log="sigterm.log", user=mode[1])
    slow = code_pickle(place / "roots" / "trusted" / "slow.pkl", _LINGER.substitute(name=name))
    import threading

    try:
        with svc.channel() as ch:
            errors = []
            thread = threading.Thread(target=lambda: errors.append(
                _expect_failure(ch, request(model_uri=str(slow)))), daemon=True)
            thread.start()
            assert wait_until(lambda: len(_named(name)) == 2, 90.0)
            started = _named(name)
            code, seconds = svc.stop(signal.SIGTERM)
            thread.join(10)
    finally:
        svc.stop(signal.SIGKILL)  # (a no-op once it has exited)
    assert code == 0 and seconds < 2.5, (code, seconds)
    assert errors == [True], "the expansion in flight must fail (the service stopped)"
    assert wait_until(lambda: not any(alive(p) for p in started), 5.0), \
        "a process started by an inspector outlived the service"


def _expect_failure(channel, req) -> bool:
    try:
        response = expand(channel, req, timeout=90)
    except Exception:  # noqa: BLE001 - the RPC dies with the service: what is expected
        return True
    return bool(response.error)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(c) for c in found.stdout.split()]


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_the_zygote_is_a_fork_of_the_service_and_is_replaced_when_killed(place, mode):
    """One import serves the service and its inspectors' zygote (forked from it at start);
    a zygote that dies is replaced by a fresh interpreter, inside the same fences."""
    svc = start(place, log="zygote.log", user=mode[1])
    try:
        with svc.channel() as ch:
            model = str(place / "roots/trusted/model.pkl")
            assert expand(ch, request(model_uri=model)).error == ""
            (zygote,) = _children(svc.proc.pid)
            assert _cmdline(zygote) == _cmdline(svc.proc.pid), "not a fork of the service"
            os.kill(zygote, signal.SIGKILL)
            # The next inspection finds it gone and starts a replacement; until that is
            # ready, requests are answered with "try again", never with a wrong signature.
            answers = []

            def served() -> bool:
                error = expand(ch, request(model_uri=model, min_batch_size=len(answers) + 2)
                               ).error
                answers.append(error)
                return error == ""

            assert wait_until(served, 90.0), answers[-3:]
            assert all(a == "" or "try again" in a for a in answers), answers
            (replacement,) = [c for c in _children(svc.proc.pid) if c != zygote]
            assert "inspector.bootstrap" in " ".join(_cmdline(replacement))
            fences = [line for line in svc.log().splitlines()
                      if "model inspectors run with" in line]
            assert len(fences) == 1 and "NO" not in fences[0].split("; ")[0], fences
            assert healthy(ch)
    finally:
        svc.stop()
