"""Models: reference architectures, the Normalize layer, and safe save/load."""

from hardened.models.io import LoadedModel, ModelInfo, load_model, save_model, sidecar_path
from hardened.models.normalize import Normalize
from hardened.models.zoo import (
    ARCHITECTURES,
    arch_kwargs_for,
    build_model,
    lenet,
    mlp,
    resnet_small,
)

__all__ = [
    "ARCHITECTURES",
    "arch_kwargs_for",
    "LoadedModel",
    "ModelInfo",
    "Normalize",
    "build_model",
    "lenet",
    "load_model",
    "mlp",
    "resnet_small",
    "save_model",
    "sidecar_path",
]
