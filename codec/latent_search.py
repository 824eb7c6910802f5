"""Encoder-side latent search: fewer bytes at the same quality, from a slower
encoder and an unchanged decoder.

A learned codec's analysis transform is *amortised*: one pass guesses latents
that are good on average over its training images, not the best for the
image at hand. Searching near that guess for the latents that minimise the
point's own training loss (rate + lambda * 255^2 * MSE + w * LPIPS-Alex) on
this image codes it better (semi-amortised inference: Campos et al., 2019;
Yang et al., NeurIPS 2020, "Improving inference for neural image
compression"). The decoder, the format and the decoded symbols' exactness are
untouched: the search only changes which symbols the encoder writes.

``search_latents(net, x, y, z, size, steps, loss)`` runs ``steps`` Adam steps
on ``y`` (the latent) and ``z`` (the hyper-latent; None for a factorized
point), their size falling from ``LR`` to nearly zero along a half cosine
over the steps (``step_size``): long steps early carry the latents across
rounding boundaries, short ones late settle them. The search rounds
with a straight-through gradient, so every iterate's loss is
that of the symbols it would code: the rate is the discrete likelihood of the
rounded symbols under the scales, means and context the decoder computes, the
distortion that of the synthesis of the rounded latent, clamped to [0, 1] and
cropped to the image. It returns the iterate with the lowest loss, the
encoder's own guess (iterate 0) included, so by the model's account a search
never codes an image worse than the plain encoder.

Each image is searched on its own, so its bytes do not depend on the batch it
came in. The search is deterministic on one machine and thread count; across
machines the encoder may pick other symbols, which decode exactly everywhere
as any symbols do. It costs ``steps`` passes of the synthesis (and LPIPS)
forward and back per image: on one CPU thread 30 steps took about 100 times a
plain encode with contiguous tensors (a job for GPU image workers); on a CPU
the search now runs channels-last, which oneDNN computes faster. Figures:
docs/benchmarks.md, "Images: latent search at encode".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import image_models
from .search_loss import SearchLoss

LR = 0.007  # Adam's first step on y and z (units of one quantisation step: 1.0)
SCHEDULES = ("cosine", "constant")  # the encoder's is the first; "constant" at a peak of 0.003 is the earlier search


def step_size(step: int, steps: int, peak: float = LR, schedule: str = "cosine") -> float:
    """Adam's step size at step ``step`` (0-based) of a ``steps``-step search:
    ``peak`` at the first, then (``cosine``) falling along a half cosine,
    above zero at the last, or (``constant``) ``peak`` throughout."""
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise ValueError(f"a search's step schedule is one of {SCHEDULES}, not {schedule!r}")
    return peak * 0.5 * (1 + math.cos(math.pi * step / steps))


def _bits_z(eb, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_hat, bits): the hyper-latent as the coder rounds it (symbols around
    the medians) and its bits under the factorized model."""
    _, z_hat = image_models.quantize_latent(z, eb._get_medians(), ste=True)
    c = z_hat.shape[1]
    lik, _, _ = eb._likelihood(z_hat.transpose(0, 1).reshape(c, 1, -1))
    if eb.use_likelihood_bound:
        lik = eb.likelihood_lower_bound(lik)
    return z_hat, -torch.log2(lik).sum()


def _forward(net, y: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat, bits) of one image's latents as they would be coded."""
    if z is None:  # factorized: y's symbols around the bottleneck's medians
        y_hat, bits = _bits_z(net.entropy_bottleneck, y)
        return net.g_s(y_hat), bits
    z_hat, bits_z = _bits_z(net.entropy_bottleneck, z)
    mu = image_models.latent_means(net, z_hat)
    y_sym, y_hat = image_models.quantize_latent(y, mu, ste=True)
    gc = net.gaussian_conditional
    lik = gc._likelihood(y_hat, image_models.latent_scales(net, z_hat, y_sym), means=mu)
    if gc.use_likelihood_bound:
        lik = gc.likelihood_lower_bound(lik)
    return net.g_s(y_hat), bits_z - torch.log2(lik).sum()


def search_latents(net, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, size: tuple[int, int],
                   steps: int, loss: SearchLoss, lpips_net=None, channels_last: bool | None = None,
                   peak: float = LR, schedule: str = "cosine") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The best latents found for the images ``x`` (B x 3 x Hp x Wp in [0, 1],
    padded to the model's stride), starting from the encoder's ``y`` and
    ``z`` (``z`` None for a factorized point); ``size`` = (h, w) of the images
    before padding. ``lpips_net``: LPIPS-Alex (``semarc.metrics.LPIPSAlex``),
    needed when ``loss.lpips_weight`` > 0. Returns (y, z), detached and
    contiguous.

    ``channels_last``: run the search's convolutions on channels-last
    tensors (default: on a CPU, where oneDNN's forward and backward passes
    are about 1.4 times as fast that way; elsewhere, the tensors' own layout).
    The layout changes float rounding, not the loss being minimised.

    ``peak``, ``schedule``: Adam's step sizes (``step_size``); the defaults
    are the encoder's."""
    if steps <= 0:
        return y, z
    step_size(0, steps, peak, schedule)  # an unknown schedule is refused before any work
    if channels_last is None:
        channels_last = x.device.type == "cpu"
    if loss.lpips_weight > 0 and lpips_net is None:
        raise ValueError("a search loss with an LPIPS weight needs lpips_net")
    h, w = size
    ys, zs = [], []
    with torch.inference_mode(False), torch.enable_grad():
        params = [p for p in net.parameters() if p.requires_grad]
        for p in params:  # the network is fixed; only the latents move
            p.requires_grad_(False)
        try:
            for j in range(x.shape[0]):
                xj, yj, zj = (None if t is None else _layout(t[j:j + 1], channels_last) for t in (x, y, z))
                yj, zj = _search_one(net, xj, yj, zj, h, w, steps, loss, lpips_net, peak, schedule)
                ys.append(yj)
                zs.append(zj)
        finally:
            for p in params:
                p.requires_grad_(True)
    return torch.cat(ys).contiguous(), None if z is None else torch.cat(zs).contiguous()


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A copy of ``t`` in the search's memory layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return t.clone(memory_format=fmt)


def objective(net, y: torch.Tensor, z: torch.Tensor | None, target: torch.Tensor, loss: SearchLoss,
              lpips_net=None, target_features: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The loss of one image's latents as they would be coded (``target``: the
    image, 1 x 3 x h x w, unpadded; the latents those of its padded size).
    ``target_features``: LPIPS-Alex's features of ``target`` (computed here
    when not given; a search computes them once per image)."""
    h, w = target.shape[-2:]
    x_hat, bits = _forward(net, y, z)
    x_hat = x_hat[..., :h, :w].clamp(0, 1)
    value = bits / (h * w) + loss.lmbda * 255 ** 2 * F.mse_loss(x_hat, target)
    if loss.lpips_weight > 0:
        if target_features is None:
            target_features = lpips_net.features(target * 2 - 1)
        value = value + loss.lpips_weight * lpips_net.distance(lpips_net.features(x_hat * 2 - 1),
                                                               target_features).sum()
    return value


def _search_one(net, x, y, z, h, w, steps, loss, lpips_net, peak, schedule):
    target = x[..., :h, :w]
    ref = None
    if loss.lpips_weight > 0:  # the image's own features, the same at every step
        with torch.no_grad():
            ref = lpips_net.features(target * 2 - 1)
    y = y.detach().requires_grad_(True)
    z = None if z is None else z.detach().requires_grad_(True)
    opt = torch.optim.Adam([y] if z is None else [y, z], lr=peak)
    best, best_y, best_z = math.inf, y.detach().clone(), None if z is None else z.detach().clone()
    for step in range(steps + 1):
        value = objective(net, y, z, target, loss, lpips_net, ref)
        v = value.item()
        if v < best:  # the loss of this iterate's own symbols (rounded forward)
            best, best_y = v, y.detach().clone()
            best_z = None if z is None else z.detach().clone()
        if step == steps:
            break
        for group in opt.param_groups:
            group["lr"] = step_size(step, steps, peak, schedule)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return best_y, best_z
