"""Prism and metric short ids: two Python worker processes of one job must not share ids.

Without crossinfer's per-process prefix (expansion_service/_short_ids.py) the same job fails
almost every time with Prism's "error decoding metrics" panic (tests/repro/prism_short_ids.py,
run without --prefixed, shows it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crossinfer import _prism
from expansion_service import _short_ids

REPRO = os.path.join(os.path.dirname(__file__), "repro", "prism_short_ids.py")


def test_short_ids_are_prefixed_and_resolve_back():
    from apache_beam.metrics import monitoring_infos
    from apache_beam.runners.worker import sdk_worker

    prefix = _short_ids.install()
    assert _short_ids.install() == prefix and prefix.startswith("ci")
    info = monitoring_infos.int64_user_counter("ns", "rows", 3, ptransform="t")
    sid = sdk_worker.SHORT_ID_CACHE.get_short_id(info)
    assert sid.startswith(prefix)
    assert sdk_worker.SHORT_ID_CACHE.get_infos([sid])[sid].urn == info.urn


@pytest.mark.prism
def test_two_worker_processes_reporting_different_metrics_pass_on_prism():
    # Stage A reports 20 distributions, stage B 20 counters, each in its own worker process.
    out = subprocess.run([sys.executable, REPRO, str(_prism.locate()), "2", "--prefixed"],
                         capture_output=True, text=True, timeout=300)
    assert "0 of 2 runs failed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
