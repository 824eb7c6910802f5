"""Text-guided encoding (TACO, Lee et al., ICML 2024): the caption steers the
analysis transform; the decoder never sees text.

``TextGuidedCheckerboard`` is the checkerboard-context hyperprior
(``image_models``) whose analysis transform ``g_a`` reads a caption's token
embeddings (``text_encoders``) through a ``TextAdapter`` after its 2nd and 3rd
GDN stages (1/4 and 1/8 of the image size). Everything the decoder runs, the
synthesis ``g_s``, the hyper-synthesis, the checkerboard context and the
entropy models, is the checkerboard architecture's, under the same parameter
names: its bitstreams are checkerboard bitstreams, decoded by the same code
with no text (``latent_codecs.Checkerboard``), and a ``checkerboard`` point
seeds one whole (the adapters start as the identity).

A ``TextAdapter`` is a cross-attention in both directions between the image
features at one scale and the text: the text tokens first gather what the
image holds (text -> image attention), then every image position reads the
updated text (image -> text attention), and a 1x1 projection, zero at
initialisation, adds the result to the features. The text's padding (in a
training batch of captions of different lengths) is masked out.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

ADAPT_AFTER = (3, 5)  # g_a layers (GDN outputs at 1/4 and 1/8 of the image size) followed by an adapter
ARCH = "text-checkerboard"


class TextAdapter(nn.Module):
    def __init__(self, channels: int, text_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.text_in = nn.Sequential(nn.Linear(text_dim, channels), nn.LayerNorm(channels))
        self.norm_image = nn.LayerNorm(channels)
        self.norm_text = nn.LayerNorm(channels)
        self.text_reads_image = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.image_reads_text = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, f: torch.Tensor, text: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """``f`` (B, C, H, W) image features; ``text`` (B, L, text_dim) token
        embeddings; ``pad`` (B, L) True at padding (None: no padding)."""
        b, c, h, w = f.shape
        img = self.norm_image(f.flatten(2).transpose(1, 2))  # (B, HW, C)
        t = self.text_in(text)
        t = t + self.text_reads_image(self.norm_text(t), img, img, need_weights=False)[0]
        upd = self.image_reads_text(img, t, t, key_padding_mask=pad, need_weights=False)[0]
        return f + self.out(upd.transpose(1, 2).reshape(b, c, h, w))


@functools.lru_cache(maxsize=None)
def network_class():
    from .image_models import _checkerboard_class

    class TextGuidedCheckerboard(_checkerboard_class()):
        """The checkerboard hyperprior with a text-guided analysis transform.
        ``text_dim``: the width of the text encoder's token embeddings."""

        def __init__(self, N: int, M: int, text_dim: int) -> None:
            super().__init__(N, M)
            self.text_adapters = nn.ModuleList(TextAdapter(N, text_dim) for _ in ADAPT_AFTER)

        def analysis(self, x: torch.Tensor, text: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
            """``g_a(x)`` guided by the text (see ``TextAdapter.forward``)."""
            adapters = dict(zip(ADAPT_AFTER, self.text_adapters))
            for i, layer in enumerate(self.g_a):
                x = layer(x)
                if i in adapters:
                    x = adapters[i](x, text, pad)
            return x

        def forward(self, x, text=None, pad=None):
            raise TypeError("a text-guided network trains through train/trainer.py (analysis + the coder's "
                            "quantisation); it has no CompressAI forward")

    return TextGuidedCheckerboard


def batch_texts(embeddings: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token embeddings of several texts -> (B, L, D) zero-padded and the
    (B, L) padding mask (None when all have the same length)."""
    n = max(e.shape[0] for e in embeddings)
    if all(e.shape[0] == n for e in embeddings):
        return torch.stack(embeddings), None
    text = torch.zeros(len(embeddings), n, embeddings[0].shape[1], dtype=embeddings[0].dtype)
    pad = torch.ones(len(embeddings), n, dtype=torch.bool)
    for i, e in enumerate(embeddings):
        text[i, :e.shape[0]] = e
        pad[i, :e.shape[0]] = False
    return text, pad
