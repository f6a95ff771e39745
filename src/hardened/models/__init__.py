"""Models: reference architectures, the Normalize layer, safe save/load, black-box targets."""

from hardened.models.blackbox import (
    BlackBox,
    CallableTarget,
    HttpMapping,
    HttpTarget,
    OnnxTarget,
    OutputsOnly,
    TorchTarget,
    as_target,
    attack_target,
)
from hardened.models.io import LoadedModel, ModelInfo, load_model, save_model, sidecar_path
from hardened.models.normalize import Normalize
from hardened.models.zoo import (
    ARCHITECTURES,
    arch_kwargs_for,
    build_model,
    lenet,
    mlp,
    resnet18,
    resnet_small,
    wrn,
    wrn_16_2,
    wrn_28_10,
)

__all__ = [
    "ARCHITECTURES",
    "BlackBox",
    "CallableTarget",
    "HttpMapping",
    "HttpTarget",
    "OnnxTarget",
    "OutputsOnly",
    "TorchTarget",
    "as_target",
    "attack_target",
    "arch_kwargs_for",
    "LoadedModel",
    "ModelInfo",
    "Normalize",
    "build_model",
    "lenet",
    "load_model",
    "mlp",
    "resnet18",
    "resnet_small",
    "save_model",
    "sidecar_path",
    "wrn",
    "wrn_16_2",
    "wrn_28_10",
]
