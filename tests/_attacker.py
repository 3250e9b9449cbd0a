"""An attacking client process: ``python tests/_attacker.py KIND PORT PLACE THREADS``.

Each thread sends requests of KIND until stdin closes; a thread that opens a new connection
per request (``loop-new``) sends a different looping ONNX model each time, so no cached answer
helps. At the end one JSON line says how many requests got which answer.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from pathlib import Path

import grpc

from tests._security_helpers import code_pickle, expand, looping_onnx, request


def _channel(port: int) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{port}",
                                 options=[("grpc.use_local_subchannel_pool", 1)])


def main() -> None:
    kind, port, place, threads = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), int(
        sys.argv[4])
    stop = threading.Event()
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    models = {f"k{i}": str(place / "roots/trusted/model.pkl") for i in range(64)}
    loop = place / "roots" / "data" / "loop.onnx"
    slow = [code_pickle(place / "roots" / "trusted" / f"slow{i}.pkl",
                        f"import time\ntime.sleep(30)  # {i}") for i in range(2)]

    def one(i: int, n: int):
        if kind == "keys64":
            return request(model_uri=None, models=models, model_key_field="id")
        if kind == "loop-slow":
            return (request(framework="onnx", model_uri=str(loop), postprocess="regression")
                    if i < 4 else request(model_uri=str(slow[i % 2])))
        # loop-new: fresh bytes each time (the cache never hits)
        fresh = looping_onnx(place / "roots" / "data" / f"loop-{i}-{n}.onnx",
                             doc=f"{i}-{n}")
        return request(framework="onnx", model_uri=str(fresh), postprocess="regression")

    def attack(i: int) -> None:
        n = 0
        ch = _channel(port)
        while not stop.is_set():
            n += 1
            if kind == "loop-new":
                ch.close()
                ch = _channel(port)
            try:
                response = expand(ch, one(i, n), timeout=300)
                outcome = "error" if response.error else "ok"
            except grpc.RpcError as e:
                outcome = e.code().name
            with lock:
                counts[outcome] += 1
        ch.close()

    workers = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    print("attacking", flush=True)
    sys.stdin.read()  # until the test closes it
    stop.set()
    # The requests in flight end too (refused at their inspection's limit, or told busy), so
    # the count says what every request got; one still running after 60 s is "unfinished".
    deadline = time.monotonic() + 60
    for t in workers:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        counts["unfinished"] += sum(t.is_alive() for t in workers)
        if not counts["unfinished"]:
            del counts["unfinished"]
        print(json.dumps(dict(counts)), flush=True)


if __name__ == "__main__":
    main()
