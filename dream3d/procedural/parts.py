"""Helpers shared by the procedural objects: proportions, part colours and small unions.

Part colours are either the prompt colour `main` [N, 3] (or a shade of it) or fixed
colours (eyes, wheels, pots), switched to a readable alternative when the main
colour is too close to them.
"""
from __future__ import annotations

import torch
from torch import Tensor

TRUNK = (0.33, 0.19, 0.07)
STEM = (0.93, 0.89, 0.76)
EYE_GLOW = (0.35, 0.95, 1.0)
CARROT = (0.98, 0.45, 0.05)
TYRE = (0.08, 0.08, 0.09)
GLASS = (0.55, 0.78, 0.95)
METAL = (0.62, 0.63, 0.66)
LEAF = (0.18, 0.58, 0.16)
TERRACOTTA = (0.72, 0.36, 0.2)
DOUGH = (0.86, 0.64, 0.36)
LAMP_GLOW = (1.0, 0.92, 0.55)
SNOW = (0.96, 0.96, 0.96)


def lerp(u: Tensor, lo: float, hi: float) -> Tensor:
    """Map uniform numbers u [N] onto [lo, hi]."""
    return lo + (hi - lo) * u


def yaw(u: Tensor, degrees: float = 6.0) -> Tensor:
    """A small random turn about +Y in [-degrees, degrees] from u [N] (0.5: none).
    New objects take it from u[:, 0], so u -> 1 - u mirrors it."""
    return lerp(u, -degrees, degrees)


def side(u: Tensor) -> Tensor:
    """+1 or -1 per scene [N] from u [N]: which side (+X or -X) an off-centre part goes.
    New objects take it from u[:, 15], so u -> 1 - u mirrors the part, which keeps the data set's
    left-right mirroring (ShardPool) inside the distribution."""
    return torch.where(u < 0.5, 1.0, -1.0).to(u.dtype)


def fixed(rgb: tuple[float, float, float], like: Tensor) -> Tensor:
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).expand(like.shape[0], 3)


def contrast_colour(main: Tensor) -> Tensor:
    """[N, 3] near-black detail colour, or near-white on dark main colours [N, 3]."""
    luminance = main @ torch.tensor([0.299, 0.587, 0.114], dtype=main.dtype, device=main.device)
    dark = torch.full_like(main, 0.06)
    light = torch.full_like(main, 0.92)
    return torch.where((luminance < 0.22)[:, None], light, dark)


def shade(main: Tensor, factor: float) -> Tensor:
    return (main * factor).clamp(0.0, 1.0)


def light_patch(main: Tensor) -> Tensor:
    """[N, 3] a pale version of the main colour (muzzles, bibs), or a darker one on pale mains."""
    luminance = main @ torch.tensor([0.299, 0.587, 0.114], dtype=main.dtype, device=main.device)
    pale = main * 0.4 + 0.6
    return torch.where((luminance > 0.6)[:, None], main * 0.6, pale)


def unless_close(rgb: tuple[float, float, float], main: Tensor, instead: Tensor, within: float = 0.35) -> Tensor:
    """The fixed colour `rgb`, or `instead` [N, 3] where the main colour is within `within` of it
    (an orange beak on an orange duck would vanish)."""
    colour = fixed(rgb, main)
    return torch.where(((main - colour).norm(dim=-1) < within)[:, None], instead, colour)


def scaled(fn, factor: float):
    """Object `fn` drawn `factor` times larger about the origin (exact: d(p) = f d(p / f)). Slender
    objects are enlarged until their widest proportions reach a radius of about 0.76, so that at 32
    pixels they fill the frame about as much as the tiny-shapes objects do."""
    def draw(p: Tensor, u: Tensor, main: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [(factor * d, c) for d, c in fn(p / factor, u, main)]

    draw.__name__, draw.__doc__ = fn.__name__, fn.__doc__
    return draw


def unite(*ds: Tensor) -> Tensor:
    """Union of distances [N, P] (one part with several pieces)."""
    out = ds[0]
    for d in ds[1:]:
        out = torch.minimum(out, d)
    return out
