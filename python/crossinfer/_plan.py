"""Everything the transform needs, checked once at construction: callables, models, types.

``build`` does the slow and fallible work (imports, model loads) so that a bad argument
fails when the transform is applied or expanded, never on a worker hours later.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Callable, Optional

from apache_beam.ml.inference.base import ModelHandler
from apache_beam.typehints import row_type

from crossinfer import _inspect, _postprocess, _schemas, frameworks
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError, OutputError
from crossinfer._blocks import Reader
from crossinfer._features import Extractor, InputSpec
from crossinfer._handler import BuiltHandler, KeyedRowHandler, RowHandler
from crossinfer._policy import Policy
from crossinfer._signature import Signature, unsample

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    specs: dict[Optional[str], InputSpec]  # model key (None: the only model) -> input spec
    key_field: Optional[str]
    handler: ModelHandler
    postprocess: Callable[[Any, str, Any], dict[str, Any]]  # one row's output -> fields
    # A whole batch's output array -> (field columns, row position -> error); None: per row.
    postprocess_many: Optional[Callable[[Any, str], _postprocess.Columns]]
    passthrough: tuple[str, ...]
    prediction_type: row_type.RowTypeConstraint
    result_names: tuple[str, ...]  # the postprocess's fields (between passthrough and model_id)
    inference_args: Optional[dict[str, Any]] = None  # passed to the model on every call
    signature: Optional[Signature] = None  # the only model's (None: several models)


def _check_input(config: Config, fields: dict[str, Any]) -> None:
    def need(name: str, argument: str) -> Any:
        if name not in fields:
            raise ConfigurationError(
                f"{argument} names field {name!r}, but the input rows have only "
                f"{sorted(fields)}")
        return fields[name]

    if config.feature_field is not None:
        if _schemas.is_array_type(need(config.feature_field, "feature_field")) is False:
            raise ConfigurationError(
                f"feature_field={config.feature_field!r} is a scalar field; name an array "
                "field, or list scalar fields in feature_fields")
    if config.blocks:
        for name in (*(config.feature_fields or ()), *config.passthrough_fields):
            if _schemas.is_array_type(need(name, "feature_fields or passthrough_fields")) is False:
                raise ConfigurationError(
                    f"with blocks=True every input field holds one value per row (an array); "
                    f"{name!r} is a scalar field")
        return
    for name in config.feature_fields or ():
        t = need(name, "feature_fields")
        if _schemas.is_array_type(t) is not False or t in (str, bytes):
            if _schemas.is_array_type(t) is None and t not in (str, bytes):
                continue  # type unknown (Any): checked per row
            raise ConfigurationError(
                f"feature_fields must be numeric scalar fields; {name!r} is {t}. An array "
                "field goes in feature_field")
    for name in config.passthrough_fields:
        need(name, "passthrough_fields")
    if config.model_key_field is not None:
        need(config.model_key_field, "model_key_field")


def _framework(config: Config, key: Optional[str],
               policy: Policy) -> tuple[Signature, BuiltHandler]:
    signature = _inspect.describe(config, key, policy)
    # What was inferred is stated, with where each fact came from.
    _LOG.info("crossinfer: model %s: %s", config.model_uris()[key], signature.explain())
    module = _inspect.framework_module(config.framework)
    return signature, module.build(config, config.model_uris()[key], signature, policy)


def _check_output(config: Config, uri: Optional[str], signature: Signature) -> None:
    """The postprocess must fit what the model returns (framework-neutral)."""
    where = signature.source("output")
    where = f" ({where})" if where else ""
    row = frameworks.get(config.framework)
    if row.opaque and signature.output is None:
        if config.postprocess == "argmax":
            raise ConfigurationError(
                "postprocess='argmax' on a custom handler needs output='probabilities' or "
                "'logits' (what its inferences are); or use postprocess='raw' or a custom one")
        return
    if config.postprocess == "argmax" and signature.output not in ("probabilities", "logits"):
        if signature.output == "value" and row.output_from_model:
            fix = "use postprocess='regression' or 'raw'"
        else:
            fix = ("set output='logits' (or 'probabilities') if these are class scores, or use "
                   "postprocess='regression' or 'raw'")
        raise ConfigurationError(
            f"postprocess='argmax' needs class scores, but model {uri!r} returns "
            f"{signature.output or 'an output of unknown kind'}{where}; {fix}")
    if config.postprocess in ("regression", "raw") and signature.output == "named":
        raise ConfigurationError(
            f"postprocess={config.postprocess!r} needs one array per row, but model {uri!r} "
            "returns a dict (output='named'); use a custom postprocess")


def _result_fields(config: Config, signatures: dict[str, Signature]) -> list[tuple[str, Any]]:
    if config.output_schema is None:
        fields = list(_schemas.BUILTIN_FIELDS[config.postprocess])
        if config.postprocess == "argmax" and _label_names(signatures):
            fields.insert(1, ("label_name", str))
        return fields
    return [(name, _schemas.parse_type(t)) for name, t in config.output_schema.items()]


def _label_names(signatures: dict[str, Signature]) -> bool:
    """Whether predictions carry class names: all models have them, or none does."""
    named = [m for m, s in signatures.items() if s.label_names is not None]
    if named and len(named) != len(signatures):
        unnamed = sorted(m for m in signatures if m not in named)
        raise ConfigurationError(
            f"model {named[0]!r} has class names but {unnamed[0]!r} has none, so label_name "
            "cannot be filled for every row; give labels=[...] for all of them, or use "
            "models of one kind")
    return bool(named)


def _synthetic_row(fields: dict[str, Any]) -> Any:
    """An input row of the schema's types with empty values, as the probe's example."""
    import apache_beam as beam

    return beam.Row(**{name: _empty(t) for name, t in fields.items()})


def _empty(t: Any) -> Any:
    if _schemas.is_array_type(t):
        return []
    for kind, value in ((bool, False), (int, 0), (float, 0.0), (str, ""), (bytes, b"")):
        if isinstance(t, type) and issubclass(t, kind):
            return t(value) if kind is not bool else False
    return None


def _check_postprocess(config: Config, postprocess: Any, signatures: dict[str, Signature],
                       fields: dict[str, Any]) -> None:
    """A custom postprocess on the probe's output of each model must return output_schema's
    fields, of its types: a mismatch fails here, not on every row of the job."""
    example = _synthetic_row(fields)
    for model_id, signature in signatures.items():
        if signature.sample is None:
            continue  # a custom handler's model, or an output too large to keep
        try:
            postprocess(unsample(signature.sample), model_id, example)
        except OutputError as e:
            raise ConfigurationError(
                f"postprocess={config.postprocess!r} on model {model_id!r}'s output for a "
                f"probe row: {e}; return a dict with exactly the output_schema fields "
                f"{list(config.output_schema or {})}, of those types") from e
        except Exception as e:  # pylint: disable=broad-except
            # It may need a real input row (the example here is empty): checked per row.
            _LOG.info("crossinfer: postprocess %s not checked on a probe row (%s: %s)",
                      config.postprocess, type(e).__name__, e)


def build(config: Config, element_type: Any, policy: Policy) -> Plan:
    """Resolve, load and type-check everything ``config`` names, against the input schema,
    under ``policy`` (which callables resolve, which files open, where)."""
    fields = _schemas.input_fields(element_type)
    _check_input(config, fields)
    extract = Extractor(
        feature_field=config.feature_field, feature_fields=config.feature_fields,
        preprocess=(policy.resolve(config.preprocess, "preprocess") if config.preprocess
                    else None))

    if config.postprocess in _schemas.BUILTIN_FIELDS:
        post_fn = None
    else:
        post_fn = policy.resolve(config.postprocess, "postprocess")

    described = {key: _framework(config, key, policy) for key in config.model_uris()}
    for key, (signature, _) in described.items():
        _check_output(config, config.model_uris()[key], signature)
    frameworks = {key: fw for key, (_, fw) in described.items()}
    signatures = {fw.model_id: sig for sig, fw in described.values()}
    result_fields = _result_fields(config, signatures)
    prediction_type = _schemas.prediction_type(
        [(name, fields[name]) for name in config.passthrough_fields],
        [(name, Sequence[t]) for name, t in result_fields] if config.blocks else result_fields)
    if config.feature_fields is not None:
        for fw in frameworks.values():
            if fw.spec.width is not None and fw.spec.width != len(config.feature_fields):
                raise ConfigurationError(
                    f"feature_fields names {len(config.feature_fields)} fields but model "
                    f"{fw.model_id!r} takes {fw.spec.width} values ({fw.spec.describe})")

    batching = {k: v for k, v in (("min_batch_size", config.min_batch_size),
                                  ("max_batch_size", config.max_batch_size),
                                  ("max_batch_duration_secs", config.max_batch_duration_secs))
                if v is not None}
    if config.blocks:  # one block per model call (or several, of max_batch_size rows)
        reader = Reader(extract, config.feature_field, config.feature_fields,
                        config.passthrough_fields)
        handler: ModelHandler = RowHandler(
            frameworks[None], extract, {"min_batch_size": 1, "max_batch_size": 1}, reader,
            max_rows=config.max_batch_size)
    elif config.models is None:
        handler = RowHandler(frameworks[None], extract, batching)
    else:
        handler = KeyedRowHandler(
            {key: RowHandler(fw, extract, {}) for key, fw in frameworks.items()}, batching,
            config.max_models_per_worker_hint)

    many: Optional[Callable[[Any, str], _postprocess.Columns]] = None
    if post_fn is not None:
        postprocess: Callable[[Any, str, Any], dict[str, Any]] = _postprocess.Custom(
            post_fn, config.postprocess, result_fields)
        _check_postprocess(config, postprocess, signatures, fields)
    elif config.postprocess == "argmax":
        argmax = _postprocess.Argmax(
            softmax={m: s.output == "logits" for m, s in signatures.items()},
            classes={m: s.labels for m, s in signatures.items()},
            names={m: s.label_names for m, s in signatures.items()})
        postprocess, many = argmax, argmax.many
    else:
        postprocess = getattr(_postprocess, config.postprocess)
        many = getattr(_postprocess, config.postprocess + "_many")

    return Plan(
        specs={key: fw.spec for key, fw in frameworks.items()},
        key_field=config.model_key_field,
        handler=handler,
        postprocess=postprocess,
        postprocess_many=many,
        passthrough=config.passthrough_fields,
        prediction_type=prediction_type,
        result_names=tuple(name for name, _ in result_fields),
        inference_args=config.inference_args,
        signature=described[None][0] if None in described else None)
