"""Self-attention across the views of a group (MVDream's 3D self-attention, arXiv 2308.16512).

A joint-view UNet sees a batch of G groups of N views laid out group-major,
[g0v0, g0v1, ..., g1v0, ...]. Its self-attention layers (`attn1` of each transformer
block) fold the view axis into the token axis, so every token of a view attends to
the tokens of all N views of its group:

    hidden states [G*N, L, C] -> [G, N*L, C] -> attention -> [G*N, L, C]

Cross-attention to the text (`attn2`, and `attn1` of levels built with
`only_cross_attention`) stays per view, as do the convolutions, so N = 1 is the plain
UNet, and a model trained this way keeps working as a single-view prior.

N travels as state on the installed processors, set for one forward pass by
`views(unet, n)`: diffusers hands `cross_attention_kwargs` to every processor,
and the stock cross-attention ones would warn about a key they do not take.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import Tensor


class MultiViewAttnProcessor:
    """A diffusers attention processor: self-attention over the tokens of all `n_views`
    views of each group; anything else (cross-attention, N = 1) is the stock processor."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.n_views = 1
        """Views per group of the next forward pass (set through `views`)."""
        self._plain = AttnProcessor2_0()  # the UNet's default, so N = 1 computes the very same values

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        """hidden_states [G*N, L, C], group-major -> [G*N, L, C]."""
        n = self.n_views
        if n == 1 or encoder_hidden_states is not None:
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if hidden_states.ndim != 3 or attention_mask is not None:
            raise ValueError("multi-view self-attention takes token sequences [B*N, L, C] without a mask")
        bn, length, channels = hidden_states.shape
        if bn % n:
            raise ValueError(f"a batch of {bn} is not whole groups of {n} views")
        folded = hidden_states.reshape(bn // n, n * length, channels)  # row g*N+v -> tokens v*L .. v*L+L-1 of g
        return self._plain(attn, folded, None, None, temb).reshape(bn, length, channels)


def _attention_layers(unet) -> Iterator[tuple[str, object]]:
    from diffusers.models.attention_processor import Attention

    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            yield name, module


def install_multiview_attention(unet) -> int:
    """Put a `MultiViewAttnProcessor` on every self-attention `attn1` layer of a diffusers UNet
    (`unet.set_attn_processor`; every other layer keeps its processor). Returns how many."""
    processors, installed = {}, 0
    for name, module in _attention_layers(unet):
        if name.endswith("attn1") and not module.is_cross_attention:
            processors[f"{name}.processor"] = MultiViewAttnProcessor()
            installed += 1
        else:
            processors[f"{name}.processor"] = module.processor
    if installed == 0:
        raise ValueError("the UNet has no self-attention layer to span views with")
    unet.set_attn_processor(processors)
    return installed


def multiview_processors(unet) -> list[MultiViewAttnProcessor]:
    """The UNet's installed multi-view processors (none on a single-view UNet)."""
    return [m.processor for _, m in _attention_layers(unet) if isinstance(m.processor, MultiViewAttnProcessor)]


@contextlib.contextmanager
def views(unet, n: int) -> Iterator[None]:
    """Within the block the UNet denoises groups of `n` consecutive images jointly."""
    n = int(n)
    if n < 1:
        raise ValueError(f"views per group must be at least 1, got {n}")
    if n == 1:
        yield  # the plain UNet, whatever is installed
        return
    procs = multiview_processors(unet)
    if not procs:
        raise ValueError(f"cannot denoise groups of {n} views: the UNet attends within each view only")
    for p in procs:
        p.n_views = n
    try:
        yield
    finally:
        for p in procs:
            p.n_views = 1
