"""Who may use the service, and who a request comes from.

Three ways in, decided once at start (``Access``):

- **owner** (the default on a loopback address, and what a JVM starts): a request is served
  only when it comes over loopback TCP from a socket owned by the service's own user. The
  kernel says who owns the client's socket: the service finds the client's end of the
  connection (its address and port, from gRPC's peer) in ``/proc/net/tcp{,6}`` and reads the
  socket's uid there, which is what ``SO_PEERCRED`` gives for a Unix socket. No client change
  is needed, so Beam's own clients (Java's ``PythonExternalTransform``, job servers calling
  the worker pool) work as they are, and no secret has to be handed over or stored.
- **token** (``--auth-token-file``): a request carries ``authorization: Bearer <token>`` as
  gRPC metadata, one of the tokens in the file (compared in constant time). With
  ``--tls-cert``/``--tls-key`` the port speaks TLS, so the token never crosses a network in
  clear.
- **anyone** (``--allow-any-client``): the explicit opt-out, e.g. behind a proxy that
  authenticates.

Anyone else gets UNAUTHENTICATED, before any work. The identity a request was admitted under
(``uid:N``, ``token:<digest>`` or ``host:<address>``) is what the fair queues count
(``current_client``): a client that opens a new connection per request is still one client.
A local client is its process (``uid:N:pid:P``, found by the socket's inode in ``/proc/*/fd``,
once per connection), so one of the owner's programs that floods the service does not starve
another of the owner's programs.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import stat
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Optional

import grpc

_PEER = re.compile(r"^ipv(?:4|6):(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)$")
_MIN_TOKEN = 16
_current = threading.local()

DENIED = ("this crossinfer expansion service serves only the user who started it (or a client "
          "with its token); connect as that user")


def current_client() -> Optional[str]:
    """The identity the current thread's request was admitted under (None outside a request)."""
    return getattr(_current, "client", None)


def peer_address(peer: str) -> Optional[tuple[str, int]]:
    """(address, port) of a gRPC peer string such as ``ipv4:127.0.0.1:5000``; None otherwise."""
    # Some gRPC releases percent-encode an IPv6 peer's brackets.
    match = _PEER.match(urllib.parse.unquote(peer or ""))
    if not match:
        return None
    return match.group("v6") or match.group("v4"), int(match.group("port"))


def _decode(hex_address: str) -> Optional[ipaddress._BaseAddress]:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    try:
        return ipaddress.ip_address(words)
    except ValueError:
        return None


def _plain(address: ipaddress._BaseAddress) -> ipaddress._BaseAddress:
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def socket_uid(address: str, port: int, remote_ports: Any = None) -> Optional[int]:
    """The uid that owns the TCP socket bound to ``address:port`` in this network namespace
    (and, if given, connected to one of ``remote_ports``); None if there is none."""
    found = socket_owner(address, port, remote_ports)
    return found[0] if found else None


def socket_owner(address: str, port: int,
                 remote_ports: Any = None) -> Optional[tuple[int, int]]:
    """(uid, inode) of the TCP socket bound to ``address:port`` (see ``socket_uid``)."""
    wanted = _plain(ipaddress.ip_address(address))
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 8:
                continue
            local, remote = parts[1].split(":"), parts[2].split(":")
            if int(local[1], 16) != port:
                continue
            if remote_ports is not None and int(remote[1], 16) not in remote_ports:
                continue
            decoded = _decode(local[0])
            if decoded is not None and _plain(decoded) == wanted:
                return int(parts[7]), int(parts[9]) if len(parts) > 9 else 0
    return None


class _Processes:
    """Which process holds a socket (by inode), for this user's processes; remembered per
    inode (a socket's inode is unique while it is open), a bounded number of them."""

    def __init__(self, size: int = 4096) -> None:
        self._known: dict[int, Optional[int]] = {}
        self._lock = threading.Lock()
        self._size = size

    def pid(self, inode: int) -> Optional[int]:
        with self._lock:
            if inode in self._known:
                return self._known[inode]
        target = f"socket:[{inode}]"
        found = None
        try:
            pids = [n for n in os.listdir("/proc") if n.isdigit()]
        except OSError:
            pids = []
        for pid in pids:
            directory = f"/proc/{pid}/fd"
            try:
                fds = os.listdir(directory)
            except OSError:
                continue  # another user's process, or gone
            for fd in fds:
                try:
                    if os.readlink(f"{directory}/{fd}") == target:
                        found = int(pid)
                        break
                except OSError:
                    continue
            if found is not None:
                break
        with self._lock:
            if len(self._known) >= self._size:
                self._known.clear()
            self._known[inode] = found
        return found


_PROCESSES = _Processes()


def socket_table_readable() -> bool:
    """Whether this process can read the kernel's TCP socket table (the owner check needs it)."""
    return any(os.access(t, os.R_OK) for t in ("/proc/self/net/tcp", "/proc/self/net/tcp6"))


def read_tokens(path: str) -> tuple[bytes, ...]:
    """The tokens in ``path`` (one a line; ``#`` comments), from a file only its owner reads."""
    try:
        info = os.stat(path)
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path} can be read by other users; chmod 600 it")
    tokens = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        if len(line) < _MIN_TOKEN or not all(0x21 <= b <= 0x7e for b in line):
            raise ValueError(f"{path} line {n}: a token is at least {_MIN_TOKEN} printable "
                             "characters without spaces (e.g. from `openssl rand -hex 32`)")
        tokens.append(line)
    if not tokens:
        raise ValueError(f"{path} holds no token; put one per line (e.g. `openssl rand -hex 32`)")
    return tuple(tokens)


@dataclass
class Access(grpc.ServerInterceptor):
    """Admits a request from the owner (loopback, same uid), a token holder, or anyone."""

    mode: str  # "owner", "token" or "anyone"
    tokens: tuple[bytes, ...] = ()
    ports: set = field(default_factory=set)  # this service's ports (the peer's remote end)
    uid: int = field(default_factory=os.getuid)
    by_process: bool = True  # a local client is its process, not its user

    def identify(self, peer: str, metadata: Any) -> Optional[str]:
        """The client's identity if it may use the service, else None."""
        where = peer_address(peer)
        if self.mode == "token":
            return self._token_identity(metadata)
        owner = self._owner(where) if where else None
        if self.mode == "anyone":
            if owner is not None:
                return self._local(*owner)
            return f"host:{where[0]}" if where else f"peer:{peer[:80]}"
        return self._local(*owner) if owner and owner[0] == self.uid else None

    def _local(self, uid: int, inode: int) -> str:
        # A local client is its process (a process that opens a new connection per request
        # stays one client); a process this service cannot see counts by its user.
        pid = _PROCESSES.pid(inode) if inode and self.by_process else None
        return f"uid:{uid}" + (f":pid:{pid}" if pid is not None else "")

    def _owner(self, where: tuple[str, int]) -> Optional[tuple[int, int]]:
        address, port = where
        try:
            if not _plain(ipaddress.ip_address(address)).is_loopback:
                return None
        except ValueError:
            return None
        return socket_owner(address, port, self.ports or None)

    def _token_identity(self, metadata: Any) -> Optional[str]:
        sent = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("latin-1")
                if text.startswith("Bearer "):
                    sent = text[len("Bearer "):].strip().encode("latin-1", "replace")
        if not sent:
            return None
        match = None
        for token in self.tokens:  # every token compared, in constant time each
            if hmac.compare_digest(token, sent):
                match = token
        if match is None:
            return None
        return "token:" + hashlib.sha256(match).hexdigest()[:12]

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        metadata = details.invocation_metadata

        def guard(behaviour: Any) -> Any:
            def checked(request: Any, context: Any) -> Any:
                client = self.identify(context.peer(), metadata)
                if client is None:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)
                _current.client = client
                try:
                    return behaviour(request, context)
                finally:
                    _current.client = None
            return checked

        kinds = ((handler.unary_unary, grpc.unary_unary_rpc_method_handler),
                 (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
                 (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
                 (handler.stream_stream, grpc.stream_stream_rpc_method_handler))
        for behaviour, make in kinds:
            if behaviour is not None:
                return make(guard(behaviour), request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler


def read_tls(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """The TLS key and certificate chain from PEM files (the key readable by its owner only).
    Turned into credentials only later (``server_credentials``): making them starts gRPC's
    threads, and the inspectors' zygote must be forked before any thread runs."""
    info = os.stat(key_path)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{key_path} can be read by other users; chmod 600 it")
    with open(key_path, "rb") as k, open(cert_path, "rb") as c:
        return k.read(), c.read()


def server_credentials(pem: tuple[bytes, bytes]) -> grpc.ServerCredentials:
    """TLS credentials from what ``read_tls`` read."""
    return grpc.ssl_server_credentials([pem])
