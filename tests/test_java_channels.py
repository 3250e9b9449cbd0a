"""No gRPC channel of ours is left for the garbage collector: the example run on Prism with the
service CrossInference starts, audited by ``ChannelAudit`` (java/examples test sources).

gRPC reports a channel collected without being shut down (the SEVERE "ManagedChannel
allocation site" trace) only once the collector has found it and another channel is built.
After the run the audit forces both, with a canary channel of its own that it never shuts down
(so a run where nothing is reported is a detector that works, not one that missed). Reports
made during the run are on stderr, except while Beam's in-process Java worker runs (it sends
the JVM's logs to the runner meanwhile). Beam's own LOOPBACK worker leaves one channel per
worker it starts (``ExternalWorkerService.startWorker`` asks the runner's provision service
through a channel it never shuts down, and others, see BEAMS_WORKER): those are Beam's, not
a failure here.
"""

from __future__ import annotations

import json
import re

import pytest

from tests import models
from tests._java import EXAMPLES_TEST_CLASSPATH, PrismJobServer, classpath, run_java

pytestmark = [pytest.mark.java, pytest.mark.prism]

CANARY = "io.crossinfer.examples.ChannelAudit.canary"
AUDIT = "io.crossinfer.examples.ChannelAudit."
# Beam's Java worker (LOOPBACK, in the submitting JVM), whose channels are not ours to close:
# seen are ExternalWorkerService.startWorker, FnHarness.main and, in some runs,
# BeamFnDataGrpcClient (beam-sdks-java-harness 2.65).
BEAMS_WORKER = "org.apache.beam.fn.harness."


def _builders_on_stderr(stderr: str) -> list[str]:
    """The class.method that built each channel gRPC reported on the console."""
    found = []
    for trace in stderr.split("ManagedChannel allocation site")[1:]:
        for frame in re.findall(r"^\s+at ([\w.$]+)\.(\w+|<init>)\(", trace, re.M):
            cls, method = frame
            if ".grpc." not in cls and not cls.endswith(".ManagedChannelFactory"):
                found.append(f"{cls}.{method}")
                break
    return found


def test_a_run_leaves_no_channel_of_ours_unclosed(tmp_path, sklearn_model):
    path, _ = sklearn_model
    x, _ = models.dataset(n=50, seed=5)
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": i, "features": [float(v) for v in row]}) + "\n"
                           for i, row in enumerate(x)))
    prism = PrismJobServer(tmp_path)
    try:
        done = run_java(classpath(EXAMPLES_TEST_CLASSPATH), "io.crossinfer.examples.ChannelAudit",
                        f"--input={src}", f"--output={tmp_path / 'out'}",
                        f"--modelUri={path}", f"--trustedModelRoots={path.parent}",
                        *prism.flags(), timeout=300)
    finally:
        prism.stop()
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "predictions=50 failures=0" in done.stdout
    assert "audit done" in done.stdout
    audited = re.findall(r"^orphan: (\S+)$", done.stdout, re.M)
    assert CANARY in audited, f"the audit did not see its own orphan: {done.stdout[-2000:]}"
    # The audit's own channels (the canary, reported from the frame that built it) are not
    # the run's.
    builders = [b for b in audited + _builders_on_stderr(done.stderr)
                if not b.startswith(AUDIT)]
    assert [b for b in builders if b.startswith("io.crossinfer.")] == [], builders
    others = [b for b in builders if not b.startswith(BEAMS_WORKER)]
    assert others == [], \
        f"a channel left unclosed outside Beam's Java worker (say where in the README): {others}"
