"""Probes a service as another local user; prints one JSON line of what each probe got.

Run as root: ``python tests/_other_user.py USER SERVICE_ADDRESS POOL_ADDRESS``. Everything is
imported first, then the process becomes USER (its uid and groups), so every socket it opens
belongs to USER, as one of that user's own programs would.
"""

from __future__ import annotations

import json
import os
import pwd
import sys

import grpc
from apache_beam.portability.api import (
    beam_expansion_api_pb2, beam_expansion_api_pb2_grpc, beam_fn_api_pb2,
    beam_fn_api_pb2_grpc, endpoints_pb2)
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _code(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def main() -> None:
    user, service, pool = sys.argv[1:4]
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    out = {"uid": os.getuid()}
    with grpc.insecure_channel(service) as ch:
        out["health"] = _code(lambda: health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=10))
        out["expand"] = _code(lambda: beam_expansion_api_pb2_grpc.ExpansionServiceStub(
            ch).Expand(beam_expansion_api_pb2.ExpansionRequest(), timeout=10))
    with grpc.insecure_channel(pool) as ch:
        out["start_worker"] = _code(lambda: beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(
            ch).StartWorker(beam_fn_api_pb2.StartWorkerRequest(
                worker_id="probe", control_endpoint=endpoints_pb2.ApiServiceDescriptor(
                    url="127.0.0.1:1")), timeout=10))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
