"""What runs: each workload's systems, with the rows each gets (full run and --quick)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Job:
    workload: str
    system: str
    rows: int
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    kwargs: Optional[dict[str, Any]] = None  # extra crossinfer kwargs
    note: str = ""


TUNED_ENV = {"OMP_NUM_THREADS": "1"}

# System labels, in table order.
LABELS = {
    "raw": "raw model loop",
    "stock": "stock RunInference, default",
    "stock-tuned": "stock RunInference, tuned",
    "crossinfer": "crossinfer, rows in (Python)",
    "crossinfer-blocks": "crossinfer, blocks in (Python)",
    "crossinfer-blocks@2": "crossinfer, blocks in, CROSSINFER_MODEL_THREADS=2",
    "stock+shuffle": "stock RunInference, default",
    "stock-tuned+shuffle": "stock RunInference, tuned",
    "crossinfer+shuffle": "crossinfer, rows in (Python)",
    "java": "crossinfer via Java (expansion service)",
    "java-peer": "the Java pipeline: Beam's Java RunInference vs CrossInference",
    "stock-rows": "stock RunInference, rows + user's Map",
    "python-io": "crossinfer in Python, same I/O as Java",
    "source-rows": "floor: source -> sink, rows",
    "source-numpy": "floor: source -> sink, numpy rows",
    "source-blocks": "floor: source -> sink, blocks",
    "source-rows+shuffle": "floor: source -> Reshuffle -> sink, rows",
    "source-numpy+shuffle": "floor: source -> Reshuffle -> sink, numpy rows",
}


QUICK = {("W1", "raw"), ("W1", "stock"), ("W1", "crossinfer"), ("W1", "crossinfer-blocks"),
         ("W2", "stock-tuned"), ("W2", "crossinfer"), ("W2", "crossinfer-blocks"),
         ("W3", "crossinfer"), ("W4", "stock"), ("W4", "crossinfer"), ("W1", "stock+shuffle"),
         ("W1", "crossinfer+shuffle"), ("W1", "stock-rows"), ("W1", "java-peer")}


def jobs(quick: bool) -> list[Job]:
    """Full: 200k rows where affordable; slow systems get fewer rows (the table says so).

    --quick: a smoke test of every kind of system on a few thousand rows, one repeat.
    """
    k = 1000
    if quick:
        return [dataclasses.replace(j, rows=min(j.rows, 4 * k))
                for j in _all(4 * k, 2 * k, k, 4 * k, k, 4 * k) if (j.workload, j.system) in QUICK]
    return _all(200 * k, 50 * k, 20 * k, 200 * k, 3 * k, 640 * k)


def _all(big: int, slow: int, seq_slow: int, io: int, torch_shuffled: int,
         java: int) -> list[Job]:
    out: list[Job] = []
    two = {"CROSSINFER_MODEL_THREADS": "2"}
    for w in ("W1", "W2", "W3"):
        out += [Job(w, "raw", big),
                Job(w, "stock", slow if w == "W2" else big),
                Job(w, "stock-rows", torch_shuffled if w == "W2" else big),
                Job(w, "stock-tuned", big // 2 if w == "W2" else big, TUNED_ENV),
                Job(w, "crossinfer", big),
                Job(w, "crossinfer-blocks", big)]
        if w != "W1":
            out.append(Job(w, "crossinfer-blocks@2", big, two))
    # After a shuffle: rows reach the model through a Reshuffle, as from beam.Create.
    for w in ("W1", "W2", "W3"):
        torch_slow = w == "W2"  # stock torch tensors through a shuffle: ~300 rows/s
        out += [Job(w, "stock+shuffle", torch_shuffled if torch_slow else big // 4),
                Job(w, "stock-tuned+shuffle", torch_shuffled if torch_slow else big // 4,
                    TUNED_ENV),
                Job(w, "crossinfer+shuffle", big // 4)]
    out += [Job("W1", "source-rows+shuffle", big // 4), Job("W1", "source-numpy+shuffle", big // 4)]
    out += [Job("W1", "source-rows", big), Job("W1", "source-numpy", big),
            Job("W1", "source-blocks", big)]
    out += [Job("W4", "raw", big),
            Job("W4", "stock", seq_slow, note="Beam's workaround: max_batch_size=1"),
            Job("W4", "stock-tuned", seq_slow, TUNED_ENV,
                note="Beam's workaround: max_batch_size=1"),
            Job("W4", "crossinfer", big)]
    out += [Job("W5", "python-io", io), Job("W5", "java", io)]
    # The Java pipeline with Beam's Java RunInference and with CrossInference (bench/peer.py):
    # marginal rates between a sixteenth of these rows and all of them (--quick: one size):
    # at ~100k rows/s a smaller difference is within the noise of one run's fixed cost.
    out += [Job(w, "java-peer", java // 2 if w == "W2" else java) for w in ("W1", "W2", "W3")]
    return out
