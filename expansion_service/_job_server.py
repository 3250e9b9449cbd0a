"""Beam's Python job server for local runs, with a short shutdown grace for each job's servers.

``python -m expansion_service._job_server --port P`` runs Beam's own
``local_job_service_main`` unchanged except for one setting: when a job ends, Beam stops the
job's control, data, state and logging gRPC servers with a 5-second grace, and the Java
LOOPBACK worker of Beam Java 2.65 leaves its streams open, so every job ends about 4-5 s after
its last bundle. By then every bundle has been processed and acknowledged; the grace only waits
for those idle streams (1 s leaves the Java harness time to shut down first: at 0.25 s it logs
a cancelled logging stream as an error). Beam has no option for it, so this sets Beam's class
constant (``crossinfer._beam.set_job_server_grace``; or warns, if a Beam release renames it)
before handing over to Beam's ``run``. ``CROSSINFER_JOB_SERVER_GRACE`` (seconds) overrides it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

GRACE_SECONDS = 1.0

_LOG = logging.getLogger(__name__)


def shorten_grace(seconds: float) -> bool:
    """Set the grace of each job's worker gRPC servers; False if this Beam has no such hook."""
    from crossinfer import _beam

    if not _beam.set_job_server_grace(seconds):
        _LOG.warning("this Beam has no setting for its job servers' shutdown grace; each job "
                     "keeps Beam's own")
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    """Run Beam's local job server (same flags) until SIGTERM, then exit."""
    logging.basicConfig(level=logging.INFO)
    shorten_grace(float(os.environ.get("CROSSINFER_JOB_SERVER_GRACE", GRACE_SECONDS)))
    from apache_beam.runners.portability import local_job_service_main

    # As Beam's own __main__ does; Beam's server then stops serving in its finally block.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        local_job_service_main.run(list(sys.argv[1:] if argv is None else argv))
    finally:
        # Beam's job server stops serving on SIGTERM but its gRPC threads keep the process
        # alive; nothing is left to flush but the log.
        logging.shutdown()
        os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
    main()
