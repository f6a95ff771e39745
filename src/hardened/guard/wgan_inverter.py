"""WGAN-GP + inverter score: how far the latent code of ``x`` is from a change of the label.

A Wasserstein GAN with gradient penalty (Gulrajani et al. 2017) learns the training images; an
inverter ``I`` maps an image to the latent code of its best reconstruction (Zhao, Dua & Singh
2018, "Generating natural adversarial examples"). For an input ``x`` with predicted class
``y0 = argmax f(x)`` the score looks for the nearest latent point whose generated image the
classifier labels differently::

    delta_z(x) = min ||z - I(x)||_2  s.t.  argmax f(G(z)) != y0
    score(x)   = -delta_z(x)          (small delta_z = fragile prediction = less reliable)

The minimisation is an iterative latent search: normalised gradient steps of length
``search_step`` that lower the logit margin of ``y0``, stopping at the first label change, then
``bisect_steps`` bisections on the last segment. When ``G(I(x))`` is already labelled
differently from ``x`` (the distance above is 0), the search runs the other way, raising the
margin of ``y0``, and ``delta_z`` is *minus* the distance back to a point labelled ``y0``: the
score stays continuous instead of piling up at 0, which would leave a false-positive target
unreachable (every tied in-distribution score at the top is refused or accepted together). A
search that finds no crossing within ``search_steps`` steps reports the searched radius
``± search_steps * search_step`` (a bound). The search is deterministic (no random restarts),
so a streamed input gets the same score as in a batch. The score is not differentiable in
``x`` (it is defined by a discrete search).

Networks (``c = width``, ``s = side / 16``, ReLU everywhere)::

    generator  z -> Linear(latent, 8c*s*s) -> 4 x ConvTranspose(4, stride 2) -> sigmoid
               (batch norm after each hidden layer)
    critic     x -> 4 x Conv(4, stride 2) -> Linear(8c*s*s, 1)
    inverter   x -> 4 x Conv(4, stride 2) -> Linear(8c*s*s, 256) -> Linear(256, latent)

Image sizes: four stride-2 layers need a side divisible by 16. Images up to 64 pixels a side are
zero-padded (centred) to the next multiple of 16, at least 16 (MNIST's 28×28 becomes 32×32);
larger images are resized (bilinear) to 64×64. Generated images are cropped (or resized) back to
the classifier's input size before the classifier sees them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardened._util.device import model_device
from hardened._util.meta import check_state_fits
from hardened._util.progress import progress_bar
from hardened._util.seeding import make_generator
from hardened.attacks.losses import logit_margin
from hardened.errors import ConfigError, NotFittedError
from hardened.guard.base import SCORES, ClassifierScore, frozen, optimizer_step, seeded_init

__all__ = ["Generator", "Critic", "Inverter", "WGANInverterScore", "ImageFrame", "gradient_penalty"]

MAX_PADDED_SIDE = 64


class ImageFrame:
    """Maps images of one size to the networks' square side and back (pad/crop or resize)."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)
        largest = max(self.height, self.width)
        self.resize = largest > MAX_PADDED_SIDE
        self.side = MAX_PADDED_SIDE if self.resize else max(16, 16 * math.ceil(largest / 16))
        self.top = (self.side - self.height) // 2
        self.left = (self.side - self.width) // 2

    def inward(self, x: Tensor) -> Tensor:
        """N×C×H×W -> N×C×side×side."""
        if self.resize:
            return F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False)
        right = self.side - self.width - self.left
        bottom = self.side - self.height - self.top
        return F.pad(x, (self.left, right, self.top, bottom))

    def outward(self, x: Tensor) -> Tensor:
        """N×C×side×side -> N×C×H×W."""
        if self.resize:
            out = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
            return out.clamp(0.0, 1.0)
        return x[:, :, self.top : self.top + self.height, self.left : self.left + self.width]


def _down(channels: int, width: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = channels
    for k in range(4):
        cout = width * 2**k
        layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.ReLU()]
        cin = cout
    return [*layers, nn.Flatten()]


class Generator(nn.Module):
    """One fully connected layer, then four stride-2 transposed convolutions; output in (0, 1).

    Batch normalisation after every hidden layer (as in DCGAN, Radford et al. 2016) keeps the
    ReLU activations from saturating the output sigmoid; the critic has none (the gradient
    penalty is per sample).
    """

    def __init__(self, latent: int, channels: int, side: int, width: int = 16) -> None:
        super().__init__()
        self.base = side // 16
        self.top_channels = 8 * width
        self.fc = nn.Linear(latent, self.top_channels * self.base * self.base)
        self.fc_norm = nn.BatchNorm2d(self.top_channels)
        layers: list[nn.Module] = []
        cin = self.top_channels
        for _ in range(3):
            cout = cin // 2
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        layers += [nn.ConvTranspose2d(cin, channels, 4, 2, 1)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], self.top_channels, self.base, self.base)
        return torch.sigmoid(self.deconv(F.relu(self.fc_norm(h))))


class Critic(nn.Module):
    """Four stride-2 convolutions and one fully connected layer; an unbounded critic value."""

    def __init__(self, channels: int, side: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(*_down(channels, width))
        self.fc = nn.Linear(8 * width * (side // 16) ** 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x)).squeeze(1)


class Inverter(nn.Module):
    """Four stride-2 convolutions and two fully connected layers: image -> latent code."""

    def __init__(self, latent: int, channels: int, side: int, width: int = 16, hidden: int = 256) -> None:
        super().__init__()
        self.features = nn.Sequential(*_down(channels, width))
        self.fc1 = nn.Linear(8 * width * (side // 16) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, latent)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(self.features(x))))


def _track(bar: Any, record: list[float], value: Tensor, step: int, total: int, task: str, label: str) -> None:
    """Advance the progress bar; every 50 steps (and at the last) record ``value`` and show it."""
    bar.advance()
    if step % 50 == 0 or step == total - 1:
        record.append(float(value.detach()))
        bar.describe(f"{task} step {step + 1}/{total} {label} {record[-1]:.4f}")


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator) -> Tensor:
    """``E[(||grad D(x_hat)||_2 - 1)^2]`` on random interpolates ``x_hat`` (Gulrajani et al. 2017)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


@SCORES.register("wgan-inverter", aliases=("wgan", "wgan-gp"))
class WGANInverterScore(ClassifierScore):
    """``-delta_z``: minus the latent distance to a label change (see the module docstring).

    Args:
        model: the classifier.
        latent: latent dimension.
        width: channel width ``c`` of the networks.
        gan_steps: generator updates (each after ``critic_steps`` critic updates).
        critic_steps, gp_weight: WGAN-GP settings (5 and 10 in Gulrajani et al.).
        inverter_steps: inverter updates; the inverter loss is
            ``||G(I(x)) - x||^2 + z_weight * ||I(G(z)) - z||^2`` (means over pixels / dims).
        lr: Adam learning rate (betas 0.5, 0.9) of the generator and the critic.
        inverter_lr: the inverter's Adam learning rate (1e-3: on MNIST, 1e-2 collapsed the
            inverter to one code and 1e-4 reconstructed fewer labels).
        train_batch_size: images per update.
        search_steps, search_step, bisect_steps: the latent search.
        seed: seeds initialisation, batches, latent samples and penalty interpolates.
    """

    name = "wgan-inverter"
    min_fit_images = 10
    differentiable = False
    seeded = True

    def __init__(
        self,
        model: nn.Module,
        *,
        latent: int = 64,
        width: int = 16,
        gan_steps: int = 2000,
        critic_steps: int = 5,
        gp_weight: float = 10.0,
        inverter_steps: int = 2000,
        z_weight: float = 0.1,
        lr: float = 1e-4,
        inverter_lr: float = 1e-3,
        train_batch_size: int = 64,
        search_steps: int = 30,
        search_step: float = 0.25,
        bisect_steps: int = 6,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        super().__init__(model, batch_size=batch_size)
        for label, value in (("latent", latent), ("width", width), ("gan_steps", gan_steps),
                             ("critic_steps", critic_steps), ("inverter_steps", inverter_steps),
                             ("train_batch_size", train_batch_size), ("search_steps", search_steps)):
            if int(value) < 1:
                raise ConfigError(f"{label} must be >= 1, got {value}")
        for label, number in (("lr", lr), ("inverter_lr", inverter_lr), ("search_step", search_step)):
            if not float(number) > 0:
                raise ConfigError(f"{label} must be > 0, got {number}")
        if int(bisect_steps) < 0 or float(gp_weight) < 0 or float(z_weight) < 0:
            raise ConfigError("bisect_steps, gp_weight and z_weight must be >= 0")
        self.latent, self.width = int(latent), int(width)
        self.gan_steps, self.critic_steps = int(gan_steps), int(critic_steps)
        self.gp_weight, self.inverter_steps, self.z_weight = float(gp_weight), int(inverter_steps), float(z_weight)
        self.lr, self.inverter_lr = float(lr), float(inverter_lr)
        self.train_batch_size = int(train_batch_size)
        self.search_steps, self.search_step = int(search_steps), float(search_step)
        self.bisect_steps, self.seed = int(bisect_steps), int(seed)
        self.generator: Generator | None = None
        self.inverter: Inverter | None = None
        self.frame: ImageFrame | None = None

    # ---- networks ---------------------------------------------------------------------------

    def _build(
        self, shape: tuple[int, int, int], device: torch.device
    ) -> tuple[ImageFrame, Generator, Critic, Inverter]:
        frame = ImageFrame(shape[1], shape[2])
        side, channels = frame.side, shape[0]
        init = make_generator(self.seed)
        gen = seeded_init(Generator(self.latent, channels, side, self.width), init).to(device)
        critic = seeded_init(Critic(channels, side, self.width), init).to(device)
        inverter = seeded_init(Inverter(self.latent, channels, side, self.width), init).to(device)
        return frame, gen, critic, inverter

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
        frame, gen, critic, inverter = self._build(shape, x.device)
        with progress_bar(self.gan_steps + self.inverter_steps, "fit wgan-gp", progress) as bar:
            gaps = self._fit_gan(x, frame, gen, critic, bar)
            inverter_losses = self.fit_inverter(x, frame, gen, inverter, bar)
        frozen(critic)
        self.frame, self.generator, self.inverter = frame, gen, inverter
        self.fit_record = {"side": frame.side, "resized": frame.resize, "critic_gap": gaps,
                           "inverter_loss": inverter_losses}

    def _batches(self, x: Tensor, frame: ImageFrame, seed: int) -> tuple[Any, Any]:
        """Functions drawing a batch of real (framed) images and a batch of latent codes."""
        rng = make_generator(seed + 1, x.device)
        picks = make_generator(seed + 2)
        n, bs = x.shape[0], min(self.train_batch_size, x.shape[0])

        def real_batch() -> Tensor:
            return frame.inward(x[torch.randint(0, n, (bs,), generator=picks).to(x.device)])

        def noise() -> Tensor:
            return torch.randn(bs, self.latent, generator=rng, device=x.device)

        return real_batch, noise

    def _fit_gan(self, x: Tensor, frame: ImageFrame, gen: Generator, critic: Critic, bar: Any) -> list[float]:
        """WGAN-GP training; returns the critic's Wasserstein gap every 50 generator steps."""
        real_batch, noise = self._batches(x, frame, self.seed)
        penalty_rng = make_generator(self.seed + 3, x.device)
        betas = (0.5, 0.9)
        opt_g = torch.optim.Adam(gen.parameters(), lr=self.lr, betas=betas)
        opt_d = torch.optim.Adam(critic.parameters(), lr=self.lr, betas=betas)
        gaps: list[float] = []
        gen.train(), critic.train()
        for step in range(self.gan_steps):
            for _ in range(self.critic_steps):
                real = real_batch()
                with torch.no_grad():
                    fake = gen(noise())
                gap = critic(real).mean() - critic(fake).mean()
                optimizer_step(opt_d, -gap + self.gp_weight * gradient_penalty(critic, real, fake, penalty_rng))
            optimizer_step(opt_g, -critic(gen(noise())).mean())
            _track(bar, gaps, gap, step, self.gan_steps, "fit wgan-gp", "W-gap")
        frozen(gen)
        return gaps

    def fit_inverter(
        self, x: Tensor, frame: ImageFrame, gen: Generator, inverter: Inverter, bar: Any
    ) -> list[float]:
        """Train ``inverter`` against the frozen generator ``gen``; returns its loss every 50 steps.

        Loss ``||G(I(x)) - x||^2 + z_weight * ||I(G(z)) - z||^2`` (means), Adam at
        ``inverter_lr``.
        """
        real_batch, noise = self._batches(x, frame, self.seed + 10)
        opt_i = torch.optim.Adam(inverter.parameters(), lr=self.inverter_lr, betas=(0.5, 0.9))
        losses: list[float] = []
        inverter.train()
        for step in range(self.inverter_steps):
            real = real_batch()
            z = noise()
            with torch.no_grad():
                fake = gen(z)
            loss_i = F.mse_loss(gen(inverter(real)), real) + self.z_weight * F.mse_loss(inverter(fake), z)
            optimizer_step(opt_i, loss_i)
            _track(bar, losses, loss_i, step, self.inverter_steps, "fit inverter", "loss")
        frozen(inverter)
        return losses

    # ---- scoring ----------------------------------------------------------------------------

    def generate(self, z: Tensor) -> Tensor:
        """Generated images in the classifier's input format, N×C×H×W."""
        if self.generator is None or self.frame is None:
            raise NotFittedError(f"the {self.name} score is not fitted (no generator): call fit(train_data) first")
        return self.frame.outward(self.generator(z))

    def invert(self, x: Tensor) -> Tensor:
        """Latent codes N×latent of images N×C×H×W."""
        if self.inverter is None or self.frame is None:
            raise NotFittedError(f"the {self.name} score is not fitted (no inverter): call fit(train_data) first")
        return self.inverter(self.frame.inward(x))

    def delta_z(self, x: Tensor) -> Tensor:
        """Signed ``delta_z`` (N,) for images ``x`` (see the module docstring)."""
        with torch.no_grad():
            y0 = self.model(x).argmax(dim=1)
            z0 = self.invert(x)
        n = x.shape[0]
        radius = self.search_steps * self.search_step
        delta = torch.full((n,), radius, device=x.device)
        outside: Tensor  # G(z0) not labelled y0; set at step 0
        active = torch.arange(n, device=x.device)
        z = z0.clone()
        previous = z0.clone()
        for step in range(self.search_steps + 1):
            with torch.enable_grad():
                z_var = z[active].detach().requires_grad_(True)
                margin = logit_margin(self.model(self.generate(z_var)), y0[active])
                (grad,) = torch.autograd.grad(margin.sum(), z_var) if step < self.search_steps else (None,)
            if step == 0:
                outside = margin.detach() < 0
                crossed = torch.zeros_like(outside)
            else:
                crossed = (margin.detach() < 0) != outside[active]
            if bool(crossed.any()):
                done = active[crossed]
                distance = self._bisect(z0[done], previous[done], z[done], y0[done], outside[done])
                delta[done] = torch.where(outside[done], -distance, distance)
                active = active[~crossed]
                grad = grad[~crossed] if grad is not None else None
            if active.numel() == 0 or grad is None:
                break
            # inside: lower y0's margin (towards a change); outside: raise it (back to y0)
            sign = torch.where(outside[active], -1.0, 1.0).to(grad.dtype)[:, None]
            direction = sign * grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
            previous[active] = z[active]
            z[active] = z[active] - self.search_step * direction
        delta[active] = torch.where(outside[active], -radius, radius)
        return delta

    @torch.no_grad()
    def _bisect(self, z0: Tensor, before: Tensor, after: Tensor, y0: Tensor, outside: Tensor) -> Tensor:
        """Distance from ``z0`` to the label boundary on the segment ``before -> after``
        (``after`` has crossed it: labelled ``y0`` for ``outside`` samples, not ``y0`` otherwise)."""
        lo, hi = before.clone(), after.clone()
        for _ in range(self.bisect_steps):
            mid = 0.5 * (lo + hi)
            crossed = (self.model(self.generate(mid)).argmax(dim=1) != y0) != outside
            hi = torch.where(crossed[:, None], mid, hi)
            lo = torch.where(crossed[:, None], lo, mid)
        return (hi - z0).norm(dim=1)

    def _score(self, x: Tensor) -> Tensor:
        return -self.delta_z(x)

    def _networks(self) -> list[nn.Module]:
        nets: list[nn.Module] = [self.model]
        return nets + [n for n in (self.generator, self.inverter) if n is not None]

    def _options(self) -> dict[str, Any]:
        return {
            "latent": self.latent, "width": self.width, "gan_steps": self.gan_steps,
            "critic_steps": self.critic_steps, "gp_weight": self.gp_weight,
            "inverter_steps": self.inverter_steps, "z_weight": self.z_weight, "lr": self.lr, "inverter_lr": self.inverter_lr,
            "train_batch_size": self.train_batch_size, "search_steps": self.search_steps,
            "search_step": self.search_step, "bisect_steps": self.bisect_steps, "seed": self.seed,
            "batch_size": self.batch_size,
        }

    def _state(self) -> dict[str, Tensor]:
        if self.generator is None or self.inverter is None:
            return {}
        return {**{f"generator.{k}": v for k, v in self.generator.state_dict().items()},
                **{f"inverter.{k}": v for k, v in self.inverter.state_dict().items()}}

    def _load(self, tensors: dict[str, Tensor], input_shape: tuple[int, int, int]) -> None:
        device = model_device(self.model)
        side, channels = ImageFrame(input_shape[1], input_shape[2]).side, input_shape[0]
        for prefix, build in (("generator.", lambda: Generator(self.latent, channels, side, self.width)),
                              ("inverter.", lambda: Inverter(self.latent, channels, side, self.width))):
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            check_state_fits(build, state, prefix[:-1])
        frame, gen, _, inverter = self._build(input_shape, device)
        for prefix, net in (("generator.", gen), ("inverter.", inverter)):
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                net.load_state_dict(state)
            except RuntimeError as error:
                raise ConfigError(f"the saved {prefix[:-1]} weights do not fit: {str(error).splitlines()[0]}") from error
            frozen(net)
        self.frame, self.generator, self.inverter = frame, gen, inverter
