"""PyTorch: Beam's PytorchModelHandlerTensor (state_dict + model_class, or TorchScript)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from apache_beam.ml.inference import utils
from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

from crossinfer._callables import resolve
from crossinfer._config import Config
from crossinfer._errors import ConfigurationError
from crossinfer._handler import Framework
from crossinfer._loading import load_once
from crossinfer._signature import Signature

_SEQUENCE_LAYERS = ("Embedding", "EmbeddingBag", "Conv1d", "RNN", "LSTM", "GRU",
                    "TransformerEncoderLayer", "TransformerEncoder", "MultiheadAttention")


def _infer(batch: torch.Tensor, model: torch.nn.Module, device: Any,
           inference_args: Optional[dict] = None, model_id: Optional[str] = None) -> Any:
    # The batch arrives stacked (and padded) already: no torch.stack over single rows.
    with torch.no_grad():
        output = model(batch.to(device), **(inference_args or {}))
    if isinstance(output, (tuple, list)):
        output = output[0]
    return utils._convert_to_result(batch, output.detach().cpu().numpy(), model_id)


def _forward(model: torch.nn.Module, batch: torch.Tensor,
             inference_args: Optional[dict] = None) -> np.ndarray:
    """One stacked batch through the module, on the module's device; numpy out."""
    param = next(model.parameters(), None)
    if param is not None and param.device != batch.device:
        batch = batch.to(param.device)
    with torch.no_grad():
        output = model(batch, **(inference_args or {}))
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output.detach().cpu().numpy()


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch)


def _prepare(threads: int) -> None:
    torch.set_num_threads(threads)


def _layer_name(module: torch.nn.Module) -> str:
    # TorchScript modules keep their Python class name in original_name.
    return getattr(module, "original_name", None) or type(module).__name__


def input_signature(model: torch.nn.Module) -> Signature:
    """Fixed width from a leading nn.Linear; variable length from a leading sequence layer."""
    for module in model.modules():
        name = _layer_name(module)
        if name == "Linear":
            width = int(module.weight.shape[1])
            return Signature(width=width, pad=False, dtype="float32",
                             describe=f"its first layer is Linear({width}, ...)", softmax=True)
        if name in ("Embedding", "EmbeddingBag"):
            return Signature(pad=True, dtype="int64", softmax=True)
        if name in _SEQUENCE_LAYERS:
            return Signature(pad=True, softmax=True)
    return Signature(pad=True, softmax=True)


def _model_class(config: Config) -> Optional[type]:
    if config.model_class is None:
        return None
    model_class = resolve(config.model_class, "model_class", want_class=True)
    if not issubclass(model_class, torch.nn.Module):
        raise ConfigurationError(
            f"model_class={config.model_class!r} is not a torch.nn.Module subclass")
    return model_class


def _handler(config: Config, model_uri: str, model_class: Optional[type], device: str,
             **kwargs: Any) -> PytorchModelHandlerTensor:
    try:
        if model_class is None:
            return PytorchModelHandlerTensor(torch_script_model_path=model_uri, device=device,
                                             **kwargs)
        return PytorchModelHandlerTensor(state_dict_path=model_uri, model_class=model_class,
                                         model_params=config.model_params, device=device,
                                         **kwargs)
    except Exception as e:  # Beam checks the argument combination
        raise ConfigurationError(f"pytorch handler rejected the arguments: {e}") from e


def loads_code(config: Config, model_uri: str) -> bool:
    """TorchScript runs code when loaded; a state_dict is loaded as weights only."""
    return config.model_class is None


def describe(config: Config, model_uri: str) -> Signature:
    """Load the module once on CPU to check it and learn what input it takes."""
    model_class = _model_class(config)
    kind = "pytorch state_dict" if model_class is not None else "TorchScript"
    probe = _handler(config, model_uri, model_class, "CPU")
    return input_signature(load_once(probe.load_model, model_uri, kind))


def build(config: Config, model_uri: str, signature: Signature) -> Framework:
    """Beam's handler for the module ``signature`` describes."""
    handler = _handler(config, model_uri, _model_class(config), config.device,
                       inference_fn=_infer, large_model=config.large_model,
                       model_copies=config.model_copies)
    return Framework(
        handler=handler, spec=signature.input_spec(), model_id=model_uri, to_model=_to_tensor,
        prepare=_prepare, softmax=signature.softmax, predict=_forward)
