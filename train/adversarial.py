"""The adversarial term of decoder-only fine-tuning (``--adv-weight``).

A conditional PatchGAN in the manner of HiFiC (Mentzer et al. 2020): the
discriminator sees an image in [-1, 1] together with the rounded latent
``y_hat`` it was decoded from, projected to a few channels and upsampled to
the image's size, and scores each patch real or decoded. Conditioning on the
latent asks "is this a plausible image *for these symbols*", so the decoder is
pushed towards realistic texture the symbols allow rather than towards any
realistic image. The losses are the non-saturating ones:

- discriminator: ``softplus(-D(x, y_hat)) + softplus(D(x_hat, y_hat))``;
- decoder: ``softplus(-D(x_hat, y_hat))``, added to the distortion with
  weight ``--adv-weight`` once ``--adv-warmup`` steps have trained the
  discriminator alone.

Only the synthesis transform trains against it (``--train-part decoder``):
the encoder and entropy model stay frozen, so the bitstreams are the
``--init`` point's byte for byte and only the pixels change. The
discriminator exists only in training; the exported checkpoint is the codec
alone.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

# The discriminator's shape is fixed (and so part of every run's identity):
# channels 32, 64, 128, 256 at strides 2, 2, 2, 1 (a 70x70-pixel receptive field
# as pix2pix's PatchGAN), half HiFiC's widths, for CPU training.
WIDTH = 32
COND_CHANNELS = 12
LATENT_STRIDE = 16  # the synthesis upsamples the latent 16x


class ConditionalPatchDiscriminator(nn.Module):
    """Per-patch logits for (image in [-1, 1], latent ``y_hat``)."""

    def __init__(self, latent_channels: int, width: int = WIDTH, cond_channels: int = COND_CHANNELS):
        super().__init__()
        self.cond = nn.Conv2d(latent_channels, cond_channels, 3, padding=1)
        w = width
        chans = [3 + cond_channels, w, 2 * w, 4 * w, 8 * w]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            conv = nn.Conv2d(a, b, 4, stride=2 if i < 3 else 1, padding=1)
            layers += [spectral_norm(conv) if i else conv, nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        c = F.leaky_relu(self.cond(y_hat), 0.2)
        c = F.interpolate(c, scale_factor=LATENT_STRIDE, mode="nearest")[..., : image.shape[-2], : image.shape[-1]]
        return self.body(torch.cat([image * 2 - 1, c], 1))


class Adversary:
    """The discriminator, its optimiser and the two losses of one run."""

    def __init__(self, latent_channels: int, weight: float, warmup: int, lr: float, seed: int,
                 device: torch.device):
        # drawn from its own seed, leaving torch's global RNG as it was: a run with the adversary
        # sees the same crops and noise as its control without
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2)
            self.disc = ConditionalPatchDiscriminator(latent_channels).to(device)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.5, 0.999))
        self.base_lr = lr
        self.weight, self.warmup = weight, warmup

    def weight_at(self, step: int) -> float:
        """The adversarial term's weight in the decoder's loss at ``step`` (0 during the warm-up)."""
        return self.weight if step >= self.warmup else 0.0

    def generator_loss(self, x_hat: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """``softplus(-D(x_hat))``: its gradient reaches the decoder, not the discriminator."""
        self.disc.requires_grad_(False)
        try:
            return F.softplus(-self.disc(x_hat, y_hat)).mean()
        finally:
            self.disc.requires_grad_(True)

    def discriminator_step(self, x: torch.Tensor, x_hat: torch.Tensor, y_hat: torch.Tensor,
                           lr_scale: float = 1.0) -> dict:
        """One update of the discriminator on real crops against their decodes;
        returns its loss and the mean probabilities it gives real and decoded
        patches (a non-finite loss skips the update)."""
        for g in self.opt.param_groups:
            g["lr"] = self.base_lr * lr_scale
        self.opt.zero_grad()
        real, fake = self.disc(x, y_hat), self.disc(x_hat.detach(), y_hat)
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        loss.backward()
        finite = bool(torch.isfinite(loss.detach()))
        if finite:
            self.opt.step()
        return {"d_loss": loss.detach(), "d_real": torch.sigmoid(real.detach()).mean(),
                "d_fake": torch.sigmoid(fake.detach()).mean(), "finite": finite}

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, st: dict) -> None:
        self.disc.load_state_dict(st["disc"])
        self.opt.load_state_dict(st["opt"])
