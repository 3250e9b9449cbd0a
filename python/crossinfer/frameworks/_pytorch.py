"""PyTorch: Beam's PytorchModelHandlerTensor (a state_dict + model_class, or TorchScript).

State dicts load with ``weights_only=True`` (``torch.save`` files) or from ``.safetensors``;
neither runs code. What the module takes is read off the module itself: the first layer
actually applied (traced with forward hooks on a probe batch, not the first one registered),
an Embedding's ``padding_idx`` as the pad value, a final Softmax as probabilities; then the
probe checks it all. On the workers everything comes from the signature: the module is only
called, never inspected (with ``large_model`` it is a proxy to another process).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import functools
import inspect
import itertools
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import numpy as np
import torch
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from crossinfer import _probe, _torch_files
from crossinfer._config import Config
from crossinfer._errors import CallableNotAllowedError, ConfigurationError, ModelLoadError
from crossinfer._handler import BuiltHandler
from crossinfer._loading import argument_for, check_exists, load_once
from crossinfer._policy import Policy
from crossinfer._signature import Signature

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _to_numpy(output: Any, named: bool = False, index: Optional[int] = None) -> Any:
    """The module's output as numpy, one entry per row: a tensor; element ``index`` of a
    tuple or list; a dict, or a tuple with ``named``, -> one dict of arrays per row (a
    tuple's by position "0", "1", ...). The signature says which (checked at construction)."""
    arrays = _arrays(output, named, index)
    if isinstance(arrays, dict):
        rows = len(next(iter(arrays.values()))) if arrays else 0
        return [{k: v[i] for k, v in arrays.items()} for i in range(rows)]
    return arrays


def _arrays(output: Any, named: bool, index: Optional[int]) -> Any:
    """A tensor -> an array; a dict or a tuple (named) -> a dict of arrays; index: one."""
    if isinstance(output, Mapping):
        return {str(k): v.detach().cpu().numpy() for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        if index is not None:
            return output[index].detach().cpu().numpy()
        if named:
            return {str(i): v.detach().cpu().numpy() for i, v in enumerate(output)}
    return output.detach().cpu().numpy()


def _forward(device: str, named: bool, index: Optional[int], model: Any, batch: torch.Tensor,
             inference_args: Optional[dict] = None) -> Any:
    """One stacked batch through the module; numpy out. ``device`` comes from the signature's
    build, never from the model (a shared model is a proxy that cannot be inspected)."""
    if device != "cpu":
        batch = batch.to(device)
    with torch.no_grad():
        return _to_numpy(model(batch, **(inference_args or {})), named, index)


def _check_outputs(config: Config, output: Any, what: str) -> None:
    """Every output of the module is used, or the configuration says which one: never
    silently the first of a tuple."""
    index = config.output_index
    if isinstance(output, (tuple, list)):
        shapes = ", ".join(str(list(getattr(o, "shape", ["?", "?"]))[1:]) for o in output[:8])
        if not all(isinstance(o, torch.Tensor) for o in output):
            raise ConfigurationError(
                f"{what} returns a {type(output).__name__} holding "
                f"{', '.join(type(o).__name__ for o in output[:8])}; crossinfer takes tensors: "
                "wrap the module so forward returns tensors")
        if index is not None and index >= len(output):
            raise ConfigurationError(
                f"output_index={index}, but {what} returns {len(output)} outputs ({shapes})")
        if index is None and config.output != "named":
            raise ConfigurationError(
                f"{what} returns a {type(output).__name__} of {len(output)} outputs "
                f"(per row: {shapes}); say which to use: output_index=0 (or another position), "
                "or output='named' with a custom postprocess that gets them all, by position "
                "'0', '1', ...")
    elif index is not None:
        kind = "a dict (use output='named')" if isinstance(output, Mapping) else "one tensor"
        raise ConfigurationError(
            f"output_index={index} picks one of several outputs, but {what} returns {kind}")


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch))


@contextlib.contextmanager
def _limit_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device(config: Config) -> str:
    return "cuda" if config.device == "GPU" and torch.cuda.is_available() else "cpu"


class _Handler(PytorchModelHandlerTensor):
    """Beam's handler, loading from the bytes ``policy`` reads (never a path: the service's
    repository walked to the file it checked), plus safetensors state dicts; the module
    computes no gradients (its outputs then pickle, as they must when a shared model answers
    from another process)."""

    def __init__(self, *args: Any, policy: Policy, safetensors: bool = False,
                 crossinfer_device: str = "cpu", model_class: Optional[type] = None,
                 model_params: Optional[dict] = None, state_dict_path: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, model_class=model_class, model_params=model_params,
                         state_dict_path=state_dict_path, **kwargs)
        self._st = safetensors
        self._crossinfer_device = crossinfer_device
        self._policy = policy

    def load_model(self) -> torch.nn.Module:
        device = self._crossinfer_device
        if self._torch_script_model_path:
            data = io.BytesIO(self._policy.read(self._torch_script_model_path))
            model = torch.jit.load(data, map_location=device, **self._load_model_args)
        elif self._st:
            model = _load_safetensors(self._policy, self._state_dict_path, self._model_class,
                                      self._model_params)
        else:
            model = self._model_class(**self._model_params)
            data = self._policy.read(self._state_dict_path)
            model.load_state_dict(torch.load(io.BytesIO(data), map_location=device,
                                             **self._load_model_args))
        model.to(device)
        for param in model.parameters():  # (ScriptModules have no requires_grad_)
            param.requires_grad_(False)
        model.eval()
        return model


def _load_safetensors(policy: Policy, path: str, model_class: type,
                      params: dict) -> torch.nn.Module:
    """The module with the file's tensors, holding a big model once: the file is mapped, not
    read into a buffer, and the module is built without storage (meta device) and takes the
    file's tensors as they are. A module whose state the file does not cover whole (a buffer
    it does not save) is built the ordinary way."""
    from safetensors.torch import load, load_file

    with policy.descriptor_path(path) as local:
        # The descriptor the core opened (and checked) is mapped; a remote file (gs://...) is
        # read whole, through Beam's FileSystems.
        state = load(policy.read(path)) if local is None else load_file(local)
    with torch.device("meta"):
        model = model_class(**params)
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = model_class(**params)
        model.load_state_dict(state)
    return model


def _model_class(config: Config, policy: Policy) -> Optional[type]:
    """``model_class`` resolved; a class re-exported by a package (``torch.nn:Linear``) is
    accepted when the allowlist admits both the given name and the class's own."""
    if config.model_class is None:
        return None
    name = config.model_class
    try:
        model_class = policy.resolve(name, "model_class", want_class=True)
    except CallableNotAllowedError:
        module_name, attr = name.split(":")
        allowed = policy.allowlist
        module = sys.modules.get(module_name)
        obj = getattr(module, attr, None) if module is not None else None
        if (not inspect.isclass(obj) or attr.startswith("_") or (allowed is not None and not any(
                fnmatch.fnmatchcase(f"{module_name}.{attr}", g) for g in allowed))):
            raise
        own = f"{obj.__module__}:{obj.__qualname__}"
        if own == name or "." in obj.__qualname__:
            raise
        model_class = policy.resolve(own, "model_class", want_class=True)  # the allowlist again
        if model_class is not obj:
            raise
    if not issubclass(model_class, torch.nn.Module):
        raise ConfigurationError(f"model_class={name!r} is not a torch.nn.Module subclass")
    return model_class


def _is_safetensors(config: Config, uri: str) -> bool:
    if config.model_file_type is not None:
        return config.model_file_type == "safetensors"
    return uri.endswith(".safetensors")


def _load_model_args(config: Config) -> dict[str, Any]:
    """torch.load's arguments: weights only (no code) unless stated otherwise."""
    return {"weights_only": True, **(config.load_model_args or {})}


def _handler(config: Config, model_uri: str, model_class: Optional[type], device: str,
             named: Optional[str] = None, **kwargs: Any) -> PytorchModelHandlerTensor:
    """``named``: the model's name when ``model_uri`` is a descriptor's path (its suffix)."""
    kwargs["env_vars"] = dict(config.env_vars or {})
    try:
        if model_class is None:
            return _Handler(torch_script_model_path=model_uri, device=device, **kwargs)
        return _Handler(state_dict_path=model_uri, model_class=model_class,
                        model_params=config.model_params, device=device,
                        safetensors=_is_safetensors(config, named or model_uri),
                        load_model_args=_load_model_args(config), **kwargs)
    except Exception as e:  # Beam checks the argument combination
        raise ConfigurationError(f"pytorch handler rejected the arguments: {e}") from e


def loads_code(config: Config, model_uri: str) -> bool:
    """TorchScript runs code when loaded, and so does torch.load without weights_only; a
    state_dict is otherwise loaded as weights only."""
    return config.model_class is None or not _load_model_args(config)["weights_only"]


def _load(config: Config, model_uri: str, model_class: Optional[type],
          policy: Policy) -> torch.nn.Module:
    argument = argument_for(config, model_uri)
    if model_class is None and _is_safetensors(config, model_uri):
        check_exists(model_uri, argument)
        raise _torch_files.state_dict_without_class(argument, model_uri)
    kind = "pytorch state_dict" if model_class is not None else "TorchScript"
    try:
        # Read through the policy: the file the repository checked, whatever its name is now.
        return load_once(_handler(config, model_uri, model_class, "CPU",
                                  policy=policy).load_model, model_uri, kind, argument,
                         policy=policy)
    except ModelLoadError as e:
        diagnosed = _torch_files.diagnose(config, model_uri, argument, e, policy)
        if diagnosed is e:
            raise
        raise diagnosed from None


def _required_inputs(model: torch.nn.Module) -> list[str]:
    """The names of forward's required positional arguments."""
    if isinstance(model, torch.jit.ScriptModule):
        try:
            args = model.forward.schema.arguments[1:]
        except Exception:  # pylint: disable=broad-except
            return []
        return [a.name for a in args if not a.has_default_value()]
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty and p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _leaves(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if not any(True for _ in m.children())]


def _name(module: torch.nn.Module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def _candidates(model: torch.nn.Module) -> list[tuple[torch.nn.Module, _probe.Declared]]:
    """Layers that could take the model's input, each with the input it would take."""
    out = []
    for m in _leaves(model):
        name = _name(m)
        d = _probe.Declared()
        if name == "Linear":
            d.input_shape = (int(m.weight.shape[1]),)
            d.input_dtype = _DTYPES.get(m.weight.dtype, "float32")
        elif name in ("Embedding", "EmbeddingBag"):
            d.input_shape, d.input_dtype = (-1,), "int64"
            d.token_high = int(m.weight.shape[0])
            padding_idx = getattr(m, "padding_idx", None)
            if padding_idx is not None and padding_idx >= 0:
                d.pad_value = int(padding_idx)
                d.sources["pad_value"] = f"{name}.padding_idx = {padding_idx}"
        elif name == "Conv1d":
            d.input_shape = (int(m.weight.shape[1]), -1)
            d.input_dtype = _DTYPES.get(m.weight.dtype, "float32")
        elif name in ("LSTM", "GRU", "RNN") and getattr(m, "batch_first", False):
            d.input_shape, d.input_dtype = (-1, int(m.input_size)), "float32"
        else:
            continue
        d.sources["input_shape"] = f"{m!r} is the first layer applied".replace("\n", " ")
        out.append((m, d))
    return out


def _trace(model: torch.nn.Module, batch: np.ndarray, inference_args: Optional[dict] = None
           ) -> tuple[Any, Optional[torch.nn.Module], Optional[torch.nn.Module]]:
    """Run the module on ``batch``; (output, first leaf layer applied, the leaf layer whose
    output is the model's output). Layers are None where hooks are not supported."""
    first: list[torch.nn.Module] = []
    last: list[tuple[torch.nn.Module, Any]] = []
    hooks = []
    try:
        for m in _leaves(model):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: first.append(mod) if not first else None))
            hooks.append(m.register_forward_hook(
                lambda mod, args, out: last.append((mod, out))))
    except Exception:  # pylint: disable=broad-except  (TorchScript modules take no hooks)
        for h in hooks:
            h.remove()
        hooks = []
    try:
        with torch.no_grad():
            out = model(_to_tensor(batch), **(inference_args or {}))
    finally:
        for h in hooks:
            h.remove()
    final = last[-1][0] if last and last[-1][1] is out else None
    return out, (first[0] if first else None) if hooks else None, final


def _declared(config: Config, model: torch.nn.Module, what: str) -> _probe.Declared:
    # Arguments given in inference_args are passed on every call: not inputs from the rows.
    required = [n for n in _required_inputs(model) if n not in (config.inference_args or {})]
    if len(required) > 1:
        raise ConfigurationError(
            f"{what} takes {len(required)} inputs ({', '.join(required)}); crossinfer feeds one "
            "array per row: give the others (the same on every call) in inference_args, wrap "
            "the module so forward takes one tensor, or use framework='custom' with your own "
            "handler")
    if config.input_shape is not None and config.input_dtype is not None:
        shape = tuple(3 if s == -1 else s for s in config.input_shape)
        tried = [(None, _probe.Declared(), np.stack(_probe.probe_rows(
            shape, config.input_dtype, [1, 1], config.pad_value or 0, None)))]
    else:
        tried = []
        for m, c in _candidates(model):
            shape = tuple(3 if s == -1 else s for s in c.input_shape)
            tried.append((m, c, np.stack(_probe.probe_rows(shape, c.input_dtype, [1, 1],
                                                           c.pad_value or 0, c.token_high))))
    for m, d, batch in tried:
        try:
            out, first, final = _trace(model, batch, config.inference_args)
        except Exception as e:  # pylint: disable=broad-except
            fix = _probe.missing_argument(e)
            if fix:  # no input shape would do: the call lacks an argument
                raise ConfigurationError(f"{what} cannot be called: {fix}") from e
            continue
        if m is not None and first is not None and first is not m:
            continue  # ran, but this layer is not where the input goes
        if m is not None and first is None:
            d.sources["input_shape"] = f"probe: the module runs on rows of {list(d.input_shape)} " \
                                       f"{d.input_dtype} (for its {_name(m)})"
        layer = first or m
        padding_idx = getattr(layer, "padding_idx", None)
        if d.pad_value is None and _name(layer) in ("Embedding", "EmbeddingBag") and \
                padding_idx is not None and padding_idx >= 0:
            d.pad_value = int(padding_idx)
            d.sources["pad_value"] = f"{_name(layer)}.padding_idx = {padding_idx}"
        if final is not None and _name(final) == "Softmax":
            d.output, d.sources["output"] = "probabilities", "its last layer is Softmax"
        elif final is not None and _name(final) == "LogSoftmax":
            d.output, d.sources["output"] = "logits", "its last layer is LogSoftmax"
        if required:
            d.input_name = required[0]
        return d
    d = _probe.Declared(input_name=required[0] if required else None)
    d.sources["input_shape"] = "no Linear, Embedding, Conv1d or batch-first RNN layer " \
                               "takes the input"
    return d


def describe(config: Config, model_uri: str, policy: Policy) -> Signature:
    """Load the module once on CPU; trace what it takes and returns; probe it."""
    model_class = _model_class(config, policy)
    model = _load(config, model_uri, model_class, policy)
    what = f"{type(model).__name__ if model_class else 'the TorchScript module'} ({model_uri})"
    declared = _declared(config, model, what)

    def run_named(batch: np.ndarray) -> Any:
        with torch.no_grad():
            out = model(_to_tensor(batch), **(config.inference_args or {}))
        _check_outputs(config, out, what)
        return _arrays(out, config.output == "named", config.output_index)

    declared.output_index = config.output_index
    return _probe.complete(config, declared, run_named, what)


def build(config: Config, model_uri: str, signature: Signature,
          policy: Policy) -> BuiltHandler:
    """Beam's handler for the module ``signature`` describes."""
    device = _device(config)
    handler = _handler(config, model_uri, _model_class(config, policy), config.device,
                       policy=policy, crossinfer_device=device, large_model=config.large_model,
                       model_copies=config.model_copies)
    return BuiltHandler(
        handler=handler, spec=signature.input_spec(), model_id=model_uri, to_model=_to_tensor,
        limit_threads=_limit_threads, predict=functools.partial(
            _forward, device, signature.output == "named", signature.output_index))
