"""Memory of two worker processes with and without large_model, for a >= 100 MB model.

    python -m bench.memory [--rows N]

Builds a PyTorch MLP of about 100 MB (a state_dict, locally), runs crossinfer.Inference on the
DirectRunner with two worker processes (multi_processing), once per setting, and samples every
process under this one from /proc/PID/smaps_rollup while the job runs. Prints the peak of the
summed RSS and PSS (PSS splits shared pages between the processes that share them, so it is the
fair total). With large_model the model lives once, in Beam's model server process, and the
workers call it through a proxy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import torch
from apache_beam.options.pipeline_options import PipelineOptions

from crossinfer import Inference

WIDTH, HIDDEN = 32, 5200  # 32*5200 + 5200*5200 + 5200*2 floats: about 109 MB (103 MiB)


class Big(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(WIDTH, HIDDEN), torch.nn.ReLU(),
                                       torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
                                       torch.nn.Linear(HIDDEN, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class Sampler(threading.Thread):
    """Peak summed RSS/PSS of this process's descendants (the workers and model server)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = (0, 0, 0)  # rss kB, pss kB, processes
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = _descendants(os.getpid())
            sizes = [_rollup(p) for p in pids]
            rss, pss = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
            if pss > self.peak[1]:
                self.peak = (rss, pss, len(pids))
            time.sleep(0.2)

    def stop(self) -> None:
        self._done.set()
        self.join()


def once(model_uri: str, rows: int, **sharing) -> tuple[int, int, int, float]:
    x = np.random.default_rng(0).normal(size=(rows, WIDTH))
    data = [beam.Row(id=i, features=x[i].tolist()) for i in range(rows)]
    options = PipelineOptions(flags=[], direct_num_workers=2,
                              direct_running_mode="multi_processing")
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    with beam.Pipeline(options=options) as p:
        out = p | beam.Create(data, reshuffle=True) | Inference(
            framework="pytorch", model_uri=model_uri, model_class="bench.memory:Big",
            feature_field="features", passthrough_fields=["id"], max_batch_size=64, **sharing)
        _ = out["predictions"] | beam.combiners.Count.Globally()
    seconds = time.perf_counter() - start
    sampler.stop()
    return (*sampler.peak, seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.pt"
        model = Big().eval()
        torch.save(model.state_dict(), path)
        size = path.stat().st_size / 2**20
        del model
        print(f"model: {size:.1f} MiB state_dict; 2 worker processes (DirectRunner "
              f"multi_processing), {args.rows} rows; peak over all worker-side processes")
        for name, sharing in (("per process", {}), ("large_model=True", {"large_model": True})):
            rss, pss, n, seconds = once(str(path), args.rows, **sharing)
            print(f"  {name:18s} RSS {rss / 1024:8.1f} MiB  PSS {pss / 1024:8.1f} MiB  "
                  f"({n} processes, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
