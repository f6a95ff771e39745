"""VAE score: the per-sample VAE loss (reconstruction + KL) of a VAE fitted on the training images.

Encoder ``x -> Linear(D, hidden) -> ReLU -> Linear(hidden, 2 * latent) -> (mu, log sigma^2)``,
decoder ``z -> Linear(latent, hidden) -> ReLU -> Linear(hidden, D) -> sigmoid``, trained with
Adam on the negative ELBO (Kingma & Welling 2014, "Auto-encoding variational Bayes")::

    loss(x) = sum_i BCE(x_i, x_hat_i) + KL(N(mu, sigma^2) || N(0, I))
            = -sum_i [x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)]
              - 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)

The score decodes the posterior mean (``z = mu``, no sampling), so it is deterministic: the
same image always gets the same score, alone or in a batch. Being fully connected, the VAE works
for any image size (the image is flattened to ``D = C*H*W``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardened._util.batching import batch_slices
from hardened._util.device import model_device
from hardened._util.meta import check_state_fits
from hardened._util.progress import progress_bar
from hardened._util.seeding import make_generator
from hardened.errors import ConfigError, NotFittedError
from hardened.guard.base import SCORES, BaseScore, frozen, optimizer_step, seeded_init

__all__ = ["VAE", "VAEScore", "vae_loss"]


class VAE(nn.Module):
    """Two fully connected layers each for the encoder and the decoder."""

    def __init__(self, dim: int, hidden: int = 400, latent: int = 20) -> None:
        super().__init__()
        self.latent = int(latent)
        self.enc1 = nn.Linear(dim, hidden)
        self.enc2 = nn.Linear(hidden, 2 * latent)
        self.dec1 = nn.Linear(latent, hidden)
        self.dec2 = nn.Linear(hidden, dim)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)``, each N×latent, for images N×C×H×W."""
        mu, logvar = self.enc2(F.relu(self.enc1(x.flatten(1)))).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_logits(self, z: Tensor) -> Tensor:
        """Pixel logits N×D (apply a sigmoid for the reconstruction)."""
        return self.dec2(F.relu(self.dec1(z)))


def vae_loss(model: VAE, x: Tensor, z_noise: Tensor | None = None) -> Tensor:
    """Per-sample negative ELBO (N,); ``z_noise`` (N×latent) samples ``z = mu + sigma * eps``,
    ``None`` decodes the mean."""
    mu, logvar = model.encode(x)
    z = mu if z_noise is None else mu + torch.exp(0.5 * logvar) * z_noise
    logits = model.decode_logits(z)
    recon = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(dim=1)
    kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    return recon + kl


@SCORES.register("vae")
class VAEScore(BaseScore):
    """The VAE loss as a reliability score (higher = less like the training images).

    Args:
        hidden: width of the hidden layers (400 as in Kingma & Welling).
        latent: latent dimension.
        epochs, lr, train_batch_size: Adam training settings.
        seed: seeds the initialisation, shuffling and reparameterisation noise.
    """

    name = "vae"
    seeded = True
    min_fit_images = 10

    def __init__(
        self,
        *,
        hidden: int = 400,
        latent: int = 20,
        epochs: int = 10,
        lr: float = 1e-3,
        train_batch_size: int = 128,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        super().__init__(batch_size=batch_size)
        for label, value in (("hidden", hidden), ("latent", latent), ("epochs", epochs),
                             ("train_batch_size", train_batch_size)):
            if int(value) < 1:
                raise ConfigError(f"{label} must be >= 1, got {value}")
        if not float(lr) > 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        self.hidden, self.latent = int(hidden), int(latent)
        self.epochs, self.lr, self.train_batch_size = int(epochs), float(lr), int(train_batch_size)
        self.seed = int(seed)
        self.vae: VAE | None = None

    def _build(self, input_shape: tuple[int, int, int], device: torch.device) -> VAE:
        dim = input_shape[0] * input_shape[1] * input_shape[2]
        model = seeded_init(VAE(dim, self.hidden, self.latent), make_generator(self.seed))
        return model.to(device)

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        model = self._build(shape, x.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        shuffle = make_generator(self.seed + 1)
        noise = make_generator(self.seed + 2, x.device)
        steps = -(-x.shape[0] // self.train_batch_size)
        losses = []
        model.train()
        with progress_bar(self.epochs * steps, "fit vae", progress) as bar:
            for epoch in range(self.epochs):
                order = torch.randperm(x.shape[0], generator=shuffle).to(x.device)
                total = 0.0
                for part in batch_slices(x.shape[0], self.train_batch_size):
                    batch = x[order[part]]
                    eps = torch.randn(batch.shape[0], self.latent, generator=noise, device=x.device)
                    loss = vae_loss(model, batch, eps).mean()
                    optimizer_step(optimizer, loss)
                    total += float(loss.detach()) * batch.shape[0]
                    bar.advance()
                losses.append(total / x.shape[0])
                bar.describe(f"fit vae epoch {epoch + 1}/{self.epochs} loss {losses[-1]:.2f}")
        frozen(model)
        self.vae = model
        self.fit_record = {"epoch_losses": losses}

    def _score(self, x: Tensor) -> Tensor:
        if self.vae is None:
            raise NotFittedError("the vae score is not fitted (no VAE): call fit(train_data) first")
        return vae_loss(self.vae, x.to(model_device(self.vae))).to(x.device)

    def _networks(self) -> list[nn.Module]:
        return [self.vae] if self.vae is not None else []

    def _options(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "latent": self.latent, "epochs": self.epochs, "lr": self.lr,
                "train_batch_size": self.train_batch_size, "seed": self.seed,
                "batch_size": self.batch_size}

    def _state(self) -> dict[str, Tensor]:
        return {} if self.vae is None else {f"vae.{k}": v for k, v in self.vae.state_dict().items()}

    def _load(self, tensors: dict[str, Tensor], input_shape: tuple[int, int, int]) -> None:
        state = {k[len("vae."):]: v for k, v in tensors.items() if k.startswith("vae.")}
        dim = input_shape[0] * input_shape[1] * input_shape[2]
        check_state_fits(lambda: VAE(dim, self.hidden, self.latent), state, "VAE")
        model = self._build(input_shape, torch.device("cpu"))
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ConfigError(f"the saved VAE weights do not fit: {str(error).splitlines()[0]}") from error
        frozen(model)
        self.vae = model
