"""Model updates while a job runs: Beam's side input of ``ModelMetadata``, every new model
checked like the first before RunInference may load it.

``Inference(model_updates=pattern)`` feeds RunInference's ``model_metadata_pcoll`` with one
``ModelMetadata`` per window of the rows, chosen when the window closes (``WindowModel``): the
newest file matching the pattern that landed after the job was built and by the window's end,
and passes the checks, else the first model. A caller's own PCollection of ``ModelMetadata``
goes through ``CheckUpdates``. On the worker, each new file must pass the checks the first
model passed at construction (the expansion service's model roots, which travel with the
transform as plain data; inspection in an isolated child where the transform was expanded by
the service; the signature) and must have the running model's signature. A refused file never
reaches RunInference, so the running model keeps serving; the refusal is logged and counted
(``crossinfer/model_updates_refused``).

This is the one module that calls the repository's and the isolated inspection's entry
points for updates.
"""

from __future__ import annotations

import dataclasses
import hashlib
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

    def __init__(self, checks: Checks, first: str) -> None:
        self._checks = checks
        self._first = first

    def process(self, metadata: Any):
        path = getattr(metadata, "model_id", None)
        if path == "":
            # "no newer model" (WatchFilePattern's): the first model, named, since Beam's
            # RunInference takes an empty id for a change and reloads its own first tag
            yield ModelMetadata(model_id=self._first, model_name=metadata.model_name)
        elif isinstance(path, str) and _verdict(self._checks, path):
            yield metadata
        elif not isinstance(path, str):
            _REFUSED.inc()
            _LOG.warning("crossinfer: model update refused: expected Beam's ModelMetadata, "
                         "got %s", type(metadata).__name__)


VERSION = re.compile(r"@[0-9a-f]{12}$")  # a model_id's version suffix: '@' + 12 hex digits


def path_of(model_id: str) -> str:
    """The file a model_id names (its version suffix, if any, removed)."""
    return VERSION.sub("", model_id)


def _landed(m: Any) -> float:
    """When a matched file took its present content and name: for a local file the later of
    its modification and status-change times (a rename into place changes the latter), else
    the file system's last-update time."""
    if not _SCHEME.match(m.path):
        try:
            st = os.stat(m.path)
            return max(st.st_mtime, st.st_ctime)
        except OSError:
            pass
    return float(m.last_updated_in_seconds)


_DIGESTS: dict[tuple, str] = {}


def _digest(path: str, key: Any) -> str:
    """The first 12 hex digits of the file's SHA-256 (once per version of the file)."""
    with _VERDICTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    with _VERDICTS_LOCK:
        _DIGESTS[key] = h.hexdigest()[:12]
    return _DIGESTS[key]


class WindowModel(beam.DoFn):
    """The one model of each window of the rows: the newest file matching the pattern that
    landed after the job was built and no later than the window's end, and that passes the
    checks; the first model if there is none.

    A function of the window alone (files are only added), so it never goes back from one
    window to the next, whichever worker computes it and however late: a backlog, a job that
    starts late and files that land together (the newer name wins a tie) give the same
    answer. The model_id of an update is ``path@`` + the first 12 hex digits of its SHA-256.
    """

    def __init__(self, pattern: str, since: float, first: str, checks: Checks) -> None:
        self._pattern = pattern
        self._since = since
        self._first = first
        self._checks = checks

    def choose(self, end: float) -> ModelMetadata:
        """The model of a window that ends at ``end`` (seconds since the epoch)."""
        try:
            found = FileSystems.match([self._pattern])[0].metadata_list
        except Exception as e:  # pylint: disable=broad-except
            _LOG.warning("crossinfer: model_updates could not be matched (%s); the running "
                         "model keeps serving", type(e).__name__)
            found = []
        landed = [(_landed(m), m.path, m.size_in_bytes) for m in found]
        newer = sorted((f for f in landed if self._since < f[0] <= end), reverse=True)
        for key in newer:
            path = key[1]
            if _verdict(self._checks, path, key):
                name = posixpath.splitext(posixpath.basename(path))[0]
                try:
                    return ModelMetadata(model_id=f"{path}@{_digest(path, key)}",
                                         model_name=name)
                except OSError:
                    continue  # removed since it was checked
        return ModelMetadata(model_id=self._first,
                             model_name=posixpath.splitext(posixpath.basename(self._first))[0])

    def process(self, _count: Any, win: Any = beam.DoFn.WindowParam):
        yield self.choose(float(win.end))


_SHARDS = 16  # keys rows are spread over while they wait for their window's end


class _Spread(beam.DoFn):
    def setup(self) -> None:
        self._n = 0

    def process(self, row: Any):
        self._n = (self._n + 1) % _SHARDS
        yield self._n, row


class _Ready:
    """In a group of rows: their window's model is out (a marker, never released)."""


def _to_every_shard(metadata: Any):
    for shard in range(_SHARDS):
        yield shard, _Ready()


def hold_until_window_end(rows: beam.PCollection,
                          models: Optional[beam.PCollection] = None) -> beam.PCollection:
    """The rows, each released when its window closes and, with ``models``, once its
    window's model is out.

    A window's side input (its model) is ready only then. With ``models`` each group holds a
    marker of its window's model, so it is released only after the model is out, whatever the
    runner's timing of side inputs (on an empty one Beam's RunInference reloads its first
    model). Once, before the marker, a Java job on Prism had a window scored by two models;
    bench/prism_side_input.py did not reproduce an early empty side input on Prism alone.
    """
    element = rows.element_type
    keyed = rows | "SpreadRows" >> beam.ParDo(_Spread()).with_output_types(
        typehints.Tuple[int, typehints.Any])
    if models is not None:
        ready = models | "ModelReady" >> beam.FlatMap(_to_every_shard).with_output_types(
            typehints.Tuple[int, typehints.Any])
        keyed = (keyed, ready) | "RowsAndModel" >> beam.Flatten().with_output_types(
            typehints.Tuple[int, typehints.Any])
    return (keyed | "WaitForWindowEnd" >> beam.GroupByKey()
            | "Release" >> beam.FlatMap(
                lambda kv: [r for r in kv[1] if not isinstance(r, _Ready)]
            ).with_output_types(element))


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
            CheckUpdates(checks_for(config, signature, policy), config.model_uri)
        ).with_output_types(ModelMetadata)
    windowfn = pcoll.windowing.windowfn
    if isinstance(windowfn, window.GlobalWindows):
        raise ConfigurationError(
            "model_updates needs windowed input: window the rows first (e.g. "
            "beam.WindowInto(FixedWindows(10)) / Window.into(FixedWindows.of(...)) in Java); "
            "each window is scored with the model current when it ends")
    if not isinstance(windowfn, window.FixedWindows):
        raise ConfigurationError(
            f"model_updates needs fixed windows, not {type(windowfn).__name__}: each window "
            "is scored by one model, chosen when it ends; window the rows with "
            "beam.WindowInto(FixedWindows(...)) (Java: Window.into(FixedWindows.of(...))) "
            "before Inference, and re-window its outputs as you need")
    check_pattern(config.model_updates, policy)
    # One element per window of the rows, when the window closes, then its model: the side
    # input has the rows' own windows, so every window with rows has exactly one model and
    # nothing runs once the rows' source ends (no endless update source to stop).
    return (pcoll
            | "ModelUpdateWindows" >> beam.Map(lambda _: 1).with_output_types(int)
            | "OnePerWindow" >> beam.CombineGlobally(sum).without_defaults()
            | "WindowModel" >> beam.ParDo(WindowModel(
                config.model_updates, time.time(), config.model_uri,
                checks_for(config, signature, policy))).with_output_types(ModelMetadata))
