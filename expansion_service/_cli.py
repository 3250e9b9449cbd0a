"""Command line: parse the flags, set up logging, hand over to the server."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

DEFAULT_HOST = "127.0.0.1"

# Packages whose insides must never be callable by a client: the standard library, Beam (its
# PythonCallableWithSource runs source code) and this service itself.
_NEVER_ALLOWED = frozenset(sys.stdlib_module_names) | {
    "apache_beam", "crossinfer", "expansion_service", "builtins"}
_WILDCARDS = set("*?[]")


def _allow_problem(glob: str) -> Optional[str]:
    """Why ``glob`` cannot be an --allow glob, or None."""
    top = glob.split(".", 1)[0]
    if not top or _WILDCARDS & set(top):
        return f"--allow {glob!r} must start with a package name, e.g. 'mypkg.features.*'"
    if top in _NEVER_ALLOWED:
        return (f"--allow {glob!r} would let clients call into {top!r}; allow your own "
                "package(s) only")
    return None


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
        "--sdk-container-image", default=None, metavar="IMAGE",
        help=("run the expanded Python stages in this Docker image (for Dataflow). Without it "
              "they run in a worker pool inside this process (local, no Docker)."))
    parser.add_argument(
        "--log-level", default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the process exit code."""
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"crossinfer-expansion-service: --port {args.port} is not a port", file=sys.stderr)
        return 2
    for glob in args.allow:
        problem = _allow_problem(glob)
        if problem:
            print(f"crossinfer-expansion-service: {problem}", file=sys.stderr)
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
    ))
