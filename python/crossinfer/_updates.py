"""Model updates while a job runs: Beam's side input of ``ModelMetadata``, every new model
checked like the first before RunInference may load it.

``Inference(model_updates=pattern)`` feeds RunInference's ``model_metadata_pcoll`` from a poll
of the pattern once per interval, in fixed windows of that interval (``NewestModel``); a
caller's own PCollection of ``ModelMetadata`` goes through ``CheckUpdates``. On the worker,
each new file must pass the checks the first model passed at
construction (the expansion service's model roots, which travel with the transform as plain
data; inspection in an isolated child where the transform was expanded by the service; the
signature) and must have the running model's signature. A refused file never reaches
RunInference, so the running model keeps serving; the refusal is logged and counted
(``crossinfer/model_updates_refused``).

This is the one module that calls the repository's and the isolated inspection's entry
points for updates.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import re
import threading
import time
from typing import Any, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam import typehints
from apache_beam.transforms import window
from apache_beam.transforms.periodicsequence import PeriodicImpulse

from crossinfer import _inspect, _repository
from crossinfer._config import Config, parse
from crossinfer._errors import ConfigurationError, ModelLoadError
from crossinfer._policy import DEFAULT, Policy
from crossinfer._signature import Signature

_LOG = logging.getLogger(__name__)
_REFUSED = Metrics.counter("crossinfer", "model_updates_refused")
_ACCEPTED = Metrics.counter("crossinfer", "model_updates_accepted")
_GLOB = re.compile(r"[*?\[]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Facts a new model must share with the running one ("sources" only says where they came from).
_COMPARED = ("input_name", "input_dtype", "input_shape", "pad_value", "allow_nan", "output",
             "num_classes", "labels", "output_names")


@dataclasses.dataclass(frozen=True)
class Checks:
    """What a worker needs to check a new model, as plain data (it is pickled with the DoFn)."""

    kwargs: dict[str, Any]  # the transform's plain arguments, model_uri replaced per file
    expected: dict[str, Any]  # the running model's signature facts
    roots: tuple[str, ...] = ()  # the service's model roots (none: a Python pipeline's own)
    trusted_roots: tuple[str, ...] = ()
    allow: Optional[tuple[str, ...]] = None  # the service's callable allowlist
    isolate: bool = False  # open new files only in an isolated child, as the service does
    # The policy the transform was built under: in the process that built it (the service's
    # own workers) the live one, with the roots it holds open and its inspectors; elsewhere
    # one without them, and the plain data above is rebuilt into a repository and inspectors.
    policy: Optional[Policy] = None


def checks_for(config: Config, signature: Signature, policy: Policy) -> Checks:
    """The checks ``policy`` puts in force (at construction or expansion), for the workers."""
    roots = policy.repository.roots if policy.repository is not None else ()
    kwargs = config.kwargs()
    kwargs.update(model_updates=None, model_update_interval_secs=None)
    return Checks(
        kwargs=kwargs, expected=_facts(signature),
        roots=tuple(r.prefix for r in roots if not r.trusted),
        trusted_roots=tuple(r.prefix for r in roots if r.trusted),
        allow=policy.allowlist, isolate=policy.runner is not None, policy=policy)


def _facts(signature: Signature) -> dict[str, Any]:
    d = signature.to_dict()
    return {k: d.get(k) for k in _COMPARED}


def check_pattern(pattern: str, policy: Policy) -> None:
    """At construction: the pattern lies under the policy's roots and matches a file now."""
    repository = policy.repository
    if repository is not None:
        literal = _GLOB.split(pattern, 1)[0]
        outside = ModelLoadError(
            f"model_updates={pattern!r} is not under this service's model roots (the "
            "operator sets them with --model-root / --trusted-model-root)")
        if _SCHEME.match(pattern):
            base = literal
        else:
            if not os.path.isabs(pattern) or ".." in pattern.split("/"):
                raise ModelLoadError(f"model_updates={pattern!r} must be an absolute pattern "
                                     "without '..' under this service's model roots")
            base = os.path.realpath(posixpath.dirname(literal)) + "/"
        if not any(base.startswith(r.prefix) or (r.alias and literal.startswith(r.alias))
                   for r in repository.roots):
            raise outside
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # pylint: disable=broad-except
        raise ConfigurationError(
            f"model_updates={pattern!r} cannot be matched ({type(e).__name__}); give a local "
            "file pattern or one Beam's FileSystems reads (gs://...)") from e
    if not found:
        raise ConfigurationError(
            f"model_updates={pattern!r} matches no file; Beam's WatchFilePattern needs at "
            "least one when the job starts (e.g. the running model's own file), then each new "
            "file (a new name) replaces the model")


_POOL_LOCK = threading.Lock()
_POOLS: dict[tuple, Any] = {}


def _isolated(checks: Checks) -> Any:
    """The isolated inspection to use in this process: the service's own if it runs here
    (the service's workers are threads of it), else a pool of this worker's own children."""
    runner = checks.policy.runner if checks.policy is not None else None
    if runner is not None:
        return runner
    key = (checks.roots, checks.trusted_roots, checks.allow)
    with _POOL_LOCK:
        if key not in _POOLS:
            from crossinfer._sandbox.pool import InspectorPool
            from crossinfer._sandbox.settings import Confinement, Limits

            _POOLS[key] = InspectorPool(
                Confinement(allow=checks.allow or (), model_roots=checks.roots,
                            trusted_model_roots=checks.trusted_roots),
                Limits(), size=1)
        return _POOLS[key]


def check_model(checks: Checks, path: str) -> Signature:
    """The signature of the model at ``path`` if it may replace the running one, else raise."""
    kwargs = dict(checks.kwargs, model_uri=path)
    if checks.roots or checks.trusted_roots:
        config = parse(**kwargs)
        module = _inspect.framework_module(config.framework)
        # In the service's process its own repository is in force: the roots it opened at
        # start-up (a root renamed and re-created since is not the one it was given).
        repository = (checks.policy.repository if checks.policy is not None else None) or \
            _repository.Repository(checks.roots, checks.trusted_roots)
        kwargs["model_uri"] = repository.admit(
            path, code=bool(module.loads_code(config, path)), argument="model_updates",
            what=_inspect.code_format(config.framework),
            directory=_inspect.frameworks.get(config.framework).directories)
    if checks.isolate:
        signature = Signature.from_dict(_isolated(checks)(kwargs, None))
    else:
        signature = Signature.from_dict(_inspect.describe_kwargs(
            kwargs, None, checks.policy or DEFAULT))
    found = _facts(signature)
    differ = [f"{k} {found[k]!r} (running: {checks.expected[k]!r})"
              for k in _COMPARED if found[k] != checks.expected[k]]
    if differ:
        raise ModelLoadError(
            "its signature differs from the running model's: " + "; ".join(differ))
    return signature


_VERDICTS: dict[tuple[str, float, int], bool] = {}  # (path, mtime, size) -> accepted
_VERDICTS_LOCK = threading.Lock()


def _verdict(checks: Checks, path: str, key: Any = None) -> bool:
    """Whether ``path`` may replace the running model; checked, logged and counted once per
    worker process (``key``: what identifies this version of the file)."""
    key = key or (path, 0.0, 0)
    with _VERDICTS_LOCK:
        if key in _VERDICTS:
            return _VERDICTS[key]
    try:
        check_model(checks, path)
        accepted = True
        _ACCEPTED.inc()
        _LOG.info("crossinfer: model update %r accepted", path)
    except Exception as e:  # pylint: disable=broad-except
        accepted = False
        _REFUSED.inc()
        _LOG.warning("crossinfer: model update %r refused, the running model keeps serving: "
                     "%s: %s", path, type(e).__name__, getattr(e, "public", None) or e)
    with _VERDICTS_LOCK:
        _VERDICTS[key] = accepted
    return accepted


class CheckUpdates(beam.DoFn):
    """The caller's ModelMetadata in, the same out if its model may replace the running one."""

    def __init__(self, checks: Checks) -> None:
        self._checks = checks

    def process(self, metadata: Any):
        path = getattr(metadata, "model_id", None)
        if path == "":
            yield metadata  # "no newer model" (WatchFilePattern's): the running model stays
        elif isinstance(path, str) and _verdict(self._checks, path):
            yield metadata
        elif not isinstance(path, str):
            _REFUSED.inc()
            _LOG.warning("crossinfer: model update refused: expected Beam's ModelMetadata, "
                         "got %s", type(metadata).__name__)


class NewestModel(beam.DoFn):
    """On each tick of the update windows: the newest file matching the pattern, written
    after the job was built, that passes the checks; ('' : none, the first model serves).

    Stateless, so each window's side input is one ModelMetadata whichever worker computes it,
    and a refused file is simply passed over for the newest accepted one.
    """

    def __init__(self, pattern: str, since: float, checks: Checks) -> None:
        self._pattern = pattern
        self._since = since
        self._checks = checks

    def process(self, tick: Any):
        try:
            found = FileSystems.match([self._pattern])[0].metadata_list
        except Exception as e:  # pylint: disable=broad-except
            _LOG.warning("crossinfer: model_updates could not be matched (%s); the running "
                         "model keeps serving", type(e).__name__)
            found = []
        newer = sorted((m for m in found if m.last_updated_in_seconds > self._since),
                       key=lambda m: (m.last_updated_in_seconds, m.path), reverse=True)
        for m in newer:
            if _verdict(self._checks, m.path, (m.path, m.last_updated_in_seconds, m.size_in_bytes)):
                name = posixpath.splitext(posixpath.basename(m.path))[0]
                yield ModelMetadata(model_id=m.path, model_name=name)
                return
        yield ModelMetadata(model_id="", model_name="")


DEFAULT_INTERVAL_SECS = 10.0
_SHARDS = 16  # keys rows are spread over while they wait for their window's end


class _Spread(beam.DoFn):
    def setup(self) -> None:
        self._n = 0

    def process(self, row: Any):
        self._n = (self._n + 1) % _SHARDS
        yield self._n, row


def hold_until_window_end(rows: beam.PCollection) -> beam.PCollection:
    """The rows, each released when its window closes.

    A window's side input (its model) is ready only then; a runner that does not hold
    ungrouped main-input elements for a windowed side input (Prism) gets them grouped.
    """
    element = rows.element_type
    keyed = rows | "SpreadRows" >> beam.ParDo(_Spread()).with_output_types(
        typehints.Tuple[int, element])
    return (keyed | "WaitForWindowEnd" >> beam.GroupByKey()
            | "Release" >> beam.FlatMap(lambda kv: kv[1]).with_output_types(element))


def side_input(pcoll: beam.PCollection, config: Config, signature: Signature,
               updates: Optional[beam.PCollection],
               policy: Policy) -> Optional[beam.PCollection]:
    """RunInference's ``model_metadata_pcoll``: checked updates; None without updates."""
    if updates is None and config.model_updates is None:
        return None
    if updates is not None:
        if config.models is not None:
            raise ConfigurationError(
                "model_updates cannot be combined with models / model_key_field: updates "
                "swap the one model of a transform; apply one Inference per model")
        if config.framework == "custom":
            raise ConfigurationError(
                "model_updates is only for framework='sklearn', 'pytorch' or 'onnx' (a "
                "custom handler's models cannot be checked before they are swapped in)")
        return updates | "CheckModelUpdates" >> beam.ParDo(
            CheckUpdates(checks_for(config, signature, policy))
        ).with_output_types(ModelMetadata)
    if isinstance(pcoll.windowing.windowfn, window.GlobalWindows):
        raise ConfigurationError(
            "model_updates needs windowed input: window the rows first (e.g. "
            "beam.WindowInto(FixedWindows(10)) / Window.into(FixedWindows.of(...)) in Java); "
            "each window is scored with the model current when it ends")
    check_pattern(config.model_updates, policy)
    interval = config.model_update_interval_secs or DEFAULT_INTERVAL_SECS
    since = time.time()
    # Fixed windows of the poll interval, one tick each: the side input of a window is the
    # one model current at its end (global-window triggered side inputs, what Beam's
    # WatchFilePattern makes, are not supported by every runner, e.g. Prism).
    ticks = pcoll.pipeline | "ModelUpdateTicks" >> PeriodicImpulse(
        start_timestamp=since, fire_interval=interval, apply_windowing=True)
    return ticks | "NewestModel" >> beam.ParDo(
        NewestModel(config.model_updates, since, checks_for(config, signature, policy))
    ).with_output_types(ModelMetadata)
