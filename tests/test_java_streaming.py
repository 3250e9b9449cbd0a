"""A Java streaming pipeline on Prism: an endless rate source in fixed windows through
CrossInference (io.crossinfer.examples.StreamRows). Each window's predictions and failures come
out while the job runs; the test then cancels the job through Prism's job API.
"""

from __future__ import annotations

import collections
import subprocess
import threading
import time

import grpc
import pytest
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from tests._java import EXAMPLES_CLASSPATH, PrismJobServer, classpath, java_env

pytestmark = [pytest.mark.java, pytest.mark.prism, pytest.mark.timeout(900)]

STREAM = "io.crossinfer.examples.StreamRows"
WINDOWS = 3  # closed windows checked whole
# One window more is awaited: the rate source may read in several splits, each stamping its
# rows with the time it reads them, so a row near a window's end can land in the next window.
AWAITED = WINDOWS + 1


class _Lines:
    """The JVM's stdout, line by line, with the time each line arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.strip()))
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.lines), timeout)


def _tally(lines):
    """Per window: output rows seen ({(kind, id): times}) and its printed counts."""
    rows = collections.defaultdict(collections.Counter)
    counts: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for _, line in lines:
        kind, window, *rest = line.split()
        if kind in ("PREDICTION", "FAILURE"):
            rows[window][(kind, int(rest[0]))] += 1
        elif kind == "WINDOW":
            what, n = rest[0].split("=")
            counts[window][what] = int(n)
    return rows, counts


def _first_windows_complete(lines) -> bool:
    """The earliest AWAITED windows are counted and every row they count has been printed.
    Each full 3-s window at 20 rows/s holds bad rows, so has both counts; the first window
    (the job starts anywhere in it) may hold fewer than 7 rows and so no failure, and Beam's
    count prints nothing for none: its failures count is 0 once the next window's counts are
    out (windows fire in order). Printing is a side effect, which a runner may repeat when it
    retries a bundle: rows are compared as distinct ids."""
    rows, counts = _tally(lines)
    first = sorted(set(rows) | set(counts))[:AWAITED + 1]
    if len(first) <= AWAITED or "predictions" not in counts[first[AWAITED]]:
        return False
    return all(
        "predictions" in counts[w] and ("failures" in counts[w] or i == 0)
        and sum(counts[w].values()) == len(rows[w]) for i, w in enumerate(first[:AWAITED]))


def _cancel_all(endpoint: str) -> list[str]:
    with grpc.insecure_channel(endpoint) as channel:
        jobs = beam_job_api_pb2_grpc.JobServiceStub(channel)
        running = [j.job_id for j in jobs.GetJobs(beam_job_api_pb2.GetJobsRequest(),
                                                    timeout=30).job_info
                   if j.state == beam_job_api_pb2.JobState.RUNNING]
        for job_id in running:
            jobs.Cancel(beam_job_api_pb2.CancelJobRequest(job_id=job_id), timeout=30)
    return running


def test_windows_stream_out_of_a_running_java_job(tmp_path, sklearn_model):
    path, _ = sklearn_model
    prism = PrismJobServer(tmp_path)
    stderr = open(tmp_path / "java.err", "w")
    proc = subprocess.Popen(
        ["java", "-cp", classpath(EXAMPLES_CLASSPATH), STREAM, f"--modelUri={path}",
         f"--trustedModelRoots={path.parent}", "--rowsPerSecond=20", "--windowSeconds=3",
         "--badEvery=7", *prism.flags()],
        stdout=subprocess.PIPE, stderr=stderr, text=True, env=java_env())
    try:
        out = _Lines(proc)
        complete = out.wait_for(_first_windows_complete, 600)
        assert complete, (out.lines[-20:], (tmp_path / "java.err").read_text()[-4000:])
        assert proc.poll() is None, "the job ended by itself: the source is endless"
        cancelled = _cancel_all(prism.endpoint)
        assert len(cancelled) == 1
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.terminate()  # the JVM's shutdown hook stops the service it started
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        prism.stop()
        stderr.close()
    lines = [l for _, l in out.lines]
    assert lines[-1] == "STATE CANCELLED", lines[-5:]

    # The first windows: every row once, as a prediction or a failure, and the counts say so.
    rows, counts = _tally(out.lines)
    closed = sorted(set(rows) | set(counts))[:AWAITED]
    ids: list[int] = []
    for window in closed:
        seen = rows[window]
        window_ids = [i for _, i in seen]
        assert len(window_ids) == len(set(window_ids)), "a row is both a prediction and a failure"
        assert counts[window]["predictions"] == sum(k == "PREDICTION" for k, _ in seen)
        assert counts[window].get("failures", 0) == sum(k == "FAILURE" for k, _ in seen)
        assert all((k == "FAILURE") == (i % 7 == 6) for k, i in seen), window
        ids += window_ids
    assert len(ids) == len(set(ids)), "a row came out in two windows"
    # Ids are numbered from 0 as the source reads them: no row up to the last one of the first
    # WINDOWS windows is missing from the windows seen.
    last = max(i for w in closed[:WINDOWS] for _, i in rows[w])
    missing = sorted(set(range(last + 1)) - set(ids))
    assert not missing, f"rows lost: {missing[:20]}"
    # The windows came out one by one as the job ran, not together.
    closed_at = [min(t for t, l in out.lines if l.startswith(f"WINDOW {w} ")) for w in closed]
    assert closed_at == sorted(closed_at)
    assert closed_at[-1] - closed_at[0] >= 2.0, closed_at
