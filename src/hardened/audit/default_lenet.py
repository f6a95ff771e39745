"""The model audited when none is given: a ``lenet`` trained on mnist-5k, cached per seed."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from hardened.data.dataset import Splits
from hardened.errors import HardenedError

__all__ = ["default_model", "default_model_path"]


def default_model_path(seed: int = 0) -> Path:
    """Where the default audit model lives: ``$HARDENED_CACHE_DIR`` or ``~/.cache/hardened``."""
    base = os.environ.get("HARDENED_CACHE_DIR")
    root = Path(base).expanduser() if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hardened"
    return root / "models" / f"lenet-mnist-5k-seed{seed}.safetensors"


def default_model(splits: Splits, seed: int = 0, progress: bool = False, epochs: int = 4) -> tuple[nn.Module, Path]:
    """A ``lenet`` trained on ``splits.train`` (mnist-5k), reused from the user cache when present."""
    from hardened.models import arch_kwargs_for, build_model, load_model, save_model
    from hardened.train import TrainConfig, train

    path = default_model_path(seed)
    if path.is_file():
        try:
            return load_model(path).model, path
        except HardenedError:
            pass  # a corrupt cache entry is retrained below and replaced atomically
    kwargs = arch_kwargs_for(splits.train)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = build_model("lenet", **kwargs)
    torch.random.set_rng_state(generator_state)
    record = train(model, splits.train, config=TrainConfig(epochs=epochs, seed=seed),
                   test_data=splits.test, progress=progress)
    save_model(model, path, arch="lenet", arch_kwargs=kwargs, input_shape=splits.train.input_shape,
               classes=splits.train.classes, training={**record.to_dict(), "data": splits.train.name})
    return model.eval(), path
