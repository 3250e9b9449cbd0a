"""Legitimate expansions under a starvation attack, against the same ones alone.

``python -m bench.starvation [--legit N] [--attackers 12]`` starts the expansion service with
its default inspection limits, then measures N legitimate expansions (a sklearn model, each a
fresh inspection) alone, and again while one attacking client process keeps 12 connections
busy with untrusted ONNX ``Loop`` models that spin until a limit stops them, opening a new
connection for every request and sending different bytes each time (the cache never hits).
It prints the legitimate success rate and p95 for both, the target (>= 90% succeed, p95 <=
3x the unattacked p95 + 1 s), and the load average, and writes them to
``bench/.work/starvation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _p95(values: list) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] if values else 0.0


def _legit(service, place: Path, n: int, seq: list) -> tuple[int, list]:
    import grpc

    from tests._security_helpers import client, expand, request

    ok, waits = 0, []
    for _ in range(n):
        seq[0] += 1
        started = time.monotonic()
        try:
            with client(service) as ch:
                response = expand(ch, request(model_uri=str(place / "roots/trusted/m.pkl"),
                                              max_batch_size=seq[0]), timeout=300)
            ok += response.error == ""
        except grpc.RpcError:
            pass
        waits.append(time.monotonic() - started)
        time.sleep(0.3)
    return ok, waits


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.starvation")
    parser.add_argument("--legit", type=int, default=40)
    parser.add_argument("--attackers", type=int, default=12)
    parser.add_argument("--out", default=str(_ROOT / "bench" / ".work" / "starvation.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(_ROOT))
    from tests._security_helpers import looping_onnx, make_place
    from tests._service_helpers import Service, write_sklearn_model

    place = make_place(Path(tempfile.mkdtemp(prefix="starvation-")))
    write_sklearn_model(place / "roots" / "trusted" / "m.pkl")
    looping_onnx(place / "roots" / "data" / "loop.onnx")
    service = Service("--port", "0", "--model-root", str(place / "roots" / "data"),
                      "--trusted-model-root", str(place / "roots" / "trusted"),
                      log_path=place / "service.log")
    seq = [1000]
    result: dict = {}
    try:
        _legit(service, place, 3, seq)  # warm
        load = [os.getloadavg()[0]]
        ok, waits = _legit(service, place, args.legit, seq)
        result["alone"] = {"ok": ok, "n": args.legit, "p95_s": round(_p95(waits), 2),
                           "max_s": round(max(waits), 2)}
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests._attacker", "loop-new", str(service.port), str(place),
             str(args.attackers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=str(_ROOT), env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        attacker.stdout.readline()
        time.sleep(5)  # the attack is under way
        load.append(os.getloadavg()[0])
        ok, waits = _legit(service, place, args.legit, seq)
        load.append(os.getloadavg()[0])
        out, _ = attacker.communicate("", timeout=600)
        result["attacked"] = {"ok": ok, "n": args.legit, "p95_s": round(_p95(waits), 2),
                              "max_s": round(max(waits), 2)}
        result["attacker"] = json.loads(out.strip().splitlines()[-1])
        result["load_1min"] = [round(x, 1) for x in load]
        limit = 3 * result["alone"]["p95_s"] + 1
        result["target"] = {"success": ">= 90%", "p95_s": f"<= {limit:.2f}",
                            "met": ok >= 0.9 * args.legit
                            and result["attacked"]["p95_s"] <= limit}
    finally:
        service.stop()
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
