"""Models: reference architectures, the Normalize layer, and safe save/load."""

from hardened.models.io import LoadedModel, ModelInfo, load_model, save_model, sidecar_path
from hardened.models.normalize import Normalize
from hardened.models.zoo import ARCHITECTURES, build_model, lenet, mlp, resnet_small

__all__ = [
    "ARCHITECTURES",
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
