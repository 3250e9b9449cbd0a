"""Command line: parse the flags, set up logging, hand over to the server."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import sys
from collections.abc import Sequence
from typing import Optional

DEFAULT_HOST = "127.0.0.1"

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossinfer-expansion-service",
        description=(
            "Beam expansion service that expands crossinfer.Inference and nothing else. "
            "Java pipelines reach it through PythonExternalTransform / CrossInference."),
    )
    parser.add_argument(
        "-p", "--port", type=int, required=True,
        help="port to listen on; 0 picks a free one (the bound address is printed)")
    parser.add_argument(
        "--host", default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument(
        "--allow", action="append", default=[], metavar="GLOB",
        help=("admit user callables matching GLOB (e.g. 'mypkg.features.*') for preprocess, "
              "postprocess, handler and model_class; repeatable. Without it no user "
              "callable resolves."))
    parser.add_argument(
        "--own-distribution", action="append", default=[], metavar="DIST",
        help=("an installed distribution (pip name) that is your own code, so --allow may name "
              "its modules; repeatable. Other installed packages are never allowed."))
    parser.add_argument(
        "--model-root", action="append", default=[], metavar="PREFIX",
        help=("load models only from under PREFIX (a local directory or gs://bucket/path/); "
              "repeatable. Only formats that are data (ONNX, torch state_dict) load from "
              "here. Without any root the service loads no model."))
    parser.add_argument(
        "--trusted-model-root", action="append", default=[], metavar="PREFIX",
        help=("like --model-root, and formats that run code when loaded (pickle, joblib, "
              "TorchScript, custom handler files) load from here too: mark only prefixes "
              "that nobody but you can write; repeatable"))
    parser.add_argument(
        "--inspect-timeout", type=float, default=120.0, metavar="SECONDS",
        help=("wall-clock backstop for opening one model at expansion (default 120), for a "
              "model that sleeps; the CPU limit is the real bound, whatever the load"))
    parser.add_argument(
        "--inspect-cpu-seconds", type=int, default=30, metavar="SECONDS",
        help="CPU limit for opening one model at expansion (default 30)")
    parser.add_argument(
        "--inspect-memory-mb", type=int, default=2048, metavar="MIB",
        help=("memory a model inspection may use beyond the libraries' own (default 2048); "
              "raise it for large models"))
    parser.add_argument(
        "--inspectors", type=int, default=2, metavar="N",
        help=("model inspections at once: N + 2 at most, 2 per client (default 2); each "
              "runs in a fresh process"))
    parser.add_argument(
        "--sdk-container-image", default=None, metavar="IMAGE",
        help=("run the expanded Python stages in this Docker image (for Dataflow). Without it "
              "they run in a worker pool inside this process (local, no Docker)."))
    parser.add_argument(
        "--idle-exit", type=float, default=0.0, metavar="SECONDS",
        help=("exit (cleanly) once no request has come and no job has run for SECONDS "
              "(default 0: never); for a service kept between local runs"))
    parser.add_argument(
        "--state-file", default=None, metavar="PATH",
        help=("once listening, write where (address, pid, version) to PATH as JSON, readable "
              "by this user only; removed at exit"))
    parser.add_argument(
        "--auth-token-file", default=None, metavar="PATH",
        help=("serve only requests that carry one of the tokens in PATH (one a line; the file "
              "readable by its owner only) as 'authorization: Bearer TOKEN' metadata. Without "
              "it, only the service's own user on this machine is served (loopback, checked "
              "by the uid of the client's socket)"))
    parser.add_argument(
        "--tls-cert", default=None, metavar="PEM",
        help="speak TLS on the port with this certificate chain (with --tls-key)")
    parser.add_argument(
        "--tls-key", default=None, metavar="PEM",
        help="the TLS certificate's private key (readable by its owner only)")
    parser.add_argument(
        "--allow-any-client", action="store_true",
        help=("serve every client that can connect, with no check of who it is (only behind "
              "something that authenticates, such as a proxy)"))
    parser.add_argument(
        "--allow-weak-sandbox", action="store_true",
        help=("inspect model files even where the kernel refuses a fence of the inspectors' "
              "sandbox (user, PID, mount or network namespaces, seccomp); without it the "
              "service then refuses to start. Accepts that code in a trusted model file may "
              "reach this service"))
    parser.add_argument(
        "--log-level", default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)")
    return parser


def _cap_malloc_arenas() -> None:
    # glibc: two malloc arenas, not one per busy thread (up to 8 x cores), so memory a request
    # freed is reused by the next instead of spread over arenas that each keep their own high
    # water mark. Only threads started after this are bound by it: it comes first.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, 2)  # M_ARENA_MAX


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code."""
    _cap_malloc_arenas()
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"crossinfer-expansion-service: --port {args.port} is not a port", file=sys.stderr)
        return 2
    from expansion_service._allow import glob_problem

    for glob in args.allow:
        problem = glob_problem(glob, args.own_distribution)
        if problem:
            print(f"crossinfer-expansion-service: {problem}", file=sys.stderr)
            return 2
    for name, low, high in (("inspect_timeout", 1, 3600), ("inspect_cpu_seconds", 1, 3600),
                            ("inspect_memory_mb", 64, 1 << 20), ("inspectors", 1, 64),
                            ("idle_exit", 0, 7 * 86400)):
        value = getattr(args, name)
        if not low <= value <= high:
            print(f"crossinfer-expansion-service: --{name.replace('_', '-')} {value} is out of "
                  f"range [{low}, {high}]", file=sys.stderr)
            return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("crossinfer-expansion-service: --tls-cert and --tls-key go together",
              file=sys.stderr)
        return 2
    if args.allow_any_client and args.auth_token_file:
        print("crossinfer-expansion-service: --allow-any-client and --auth-token-file exclude "
              "each other (a token file serves only its tokens)", file=sys.stderr)
        return 2
    if not (args.auth_token_file or args.allow_any_client or _loopback(args.host)):
        print(f"crossinfer-expansion-service: --host {args.host} reaches other machines, whose "
              "users this service cannot check: give --auth-token-file (and --tls-cert/"
              "--tls-key), or --allow-any-client behind a proxy that authenticates",
              file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.log_level != "DEBUG":
        # Beam logs several INFO lines per expansion (and the in-process worker many per
        # bundle); keep its warnings and errors, and the service's one line per expansion.
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Imported here so that --help and flag errors stay instant (Beam takes seconds to import).
    from expansion_service._server import ServiceConfig, serve

    return serve(ServiceConfig(
        host=args.host,
        port=args.port,
        allow=tuple(args.allow),
        container_image=args.sdk_container_image,
        model_roots=tuple(args.model_root),
        trusted_model_roots=tuple(args.trusted_model_root),
        inspect_timeout=args.inspect_timeout,
        inspect_cpu_seconds=args.inspect_cpu_seconds,
        inspect_memory_mb=args.inspect_memory_mb,
        inspectors=args.inspectors,
        idle_exit=args.idle_exit,
        state_file=args.state_file,
        token_file=args.auth_token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        any_client=args.allow_any_client,
        allow_weak_sandbox=args.allow_weak_sandbox,
    ))


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
