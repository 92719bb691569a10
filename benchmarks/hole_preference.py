"""Does the prior want a torus's hole open? Its scores of a torus rendered with the hole
open and with the hole painted over, at the CFG scales SDS uses.

    python benchmarks/hole_preference.py                         # the default prior, "a blue torus"
    python benchmarks/hole_preference.py --model toy-world --prompt "a red donut"

The world's own object (the procedural renderer the prior was trained on) is rendered at
16 azimuths per elevation at the prior's resolution, with its camera. The hole is the
background enclosed by the object's silhouette in each view; the painted variants fill those
pixels with a dark shade of the object's colour (a shadowed inside, what the Gaussian stage
leaves there) or with its mean colour (a lid).

Per variant, with common random noise and t uniform in [20, 980): the conditional and
unconditional denoising errors L_c, L_u (mean squared eps error; the diffusion classifier's
estimate, Li et al. 2023: log p(c | x) ~ L_u - L_c up to weighting). SDS at CFG scale s
follows eps_c + (s - 1)(eps_c - eps_u), i.e. it lowers E_s = L_c - (s - 1)(L_u - L_c):
likelihood plus (s - 1) times the implicit classifier. "s*" is the scale above which a
painted hole has the lower E_s than the open one (none: the open hole wins at every scale).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from dream3d.cameras.orbit import orbit_cameras
from dream3d.cameras.views import view_names, with_view
from dream3d.priors import vocab
from dream3d.procedural.dataset import make_labeled_batch

DARK = 0.35  # the shadowed inside: this fraction of the object's mean colour


def enclosed_background(coverage: torch.Tensor) -> torch.Tensor:
    """[N, H, W] bool: background pixels the silhouette encloses (a hole seen through), per view."""
    cov = coverage.numpy() > 0.5
    return torch.from_numpy(np.stack([ndimage.binary_fill_holes(c) & ~c for c in cov]))


def painted(images: torch.Tensor, coverage: torch.Tensor, holes: torch.Tensor, shade: float) -> torch.Tensor:
    """images [N, H, W, 3] with each view's hole pixels set to `shade` times its object's mean colour."""
    out = images.clone()
    for i in range(len(images)):
        if holes[i].any():
            out[i][holes[i]] = images[i][coverage[i] > 0.5].mean(0) * shade
    return out


@torch.no_grad()
def denoising_errors(prior, images: torch.Tensor, cams, prompt: str, samples: int, seed: int = 0) -> tuple[float, float]:
    """(L_c, L_u): mean squared eps error of the prior on `images` [N, H, W, 3], with and without
    the prompt (its view suffix per camera), over `samples` draws of (t, eps) fixed by `seed`."""
    views = view_names(cams.elevation, cams.azimuth)
    cond = prior.embed([with_view(prompt, v) for v in views])
    uncond = prior.embed([""] * len(views))
    camera = cams.pose_features().to(prior.device) if prior.takes_camera else None
    x = prior.encode(images).float()
    gen = torch.Generator().manual_seed(seed)
    e_c = e_u = 0.0
    for _ in range(samples):
        t = torch.randint(20, 980, (len(x),), generator=gen)
        eps = torch.randn(x.shape, generator=gen)
        a = prior.alphas_cumprod[t].view(-1, 1, 1, 1).to(x)
        x_t = a.sqrt() * x + (1 - a).sqrt() * eps
        pred = prior.predict_eps(torch.cat([x_t, x_t]), torch.cat([t, t]).to(x.device), torch.cat([cond, uncond]),
                                 camera=None if camera is None else torch.cat([camera, camera])).float()
        p_c, p_u = pred.chunk(2)
        e_c += float(((p_c - eps) ** 2).mean()) / samples
        e_u += float(((p_u - eps) ** 2).mean()) / samples
    return e_c, e_u


def crossover(open_: tuple[float, float], other: tuple[float, float]) -> float | None:
    """The CFG scale s above which `other` has the lower E_s = L_c - (s - 1)(L_u - L_c); None if never
    (for s >= 1), 1.0 if it already wins at s = 1."""
    (c0, u0), (c1, u1) = open_, other
    if c1 <= c0:
        return 1.0
    gap0, gap1 = u0 - c0, u1 - c1
    if gap1 <= gap0:
        return None
    return 1.0 + (c1 - c0) / (gap1 - gap0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny-shapes")
    ap.add_argument("--prompt", default="a blue torus")
    ap.add_argument("--elevations", type=float, nargs="+", default=[30.0, 50.0, 70.0])
    ap.add_argument("--views", type=int, default=16, help="azimuths per elevation")
    ap.add_argument("--samples", type=int, default=64, help="(t, eps) draws per variant")
    ap.add_argument("--image", default=None, help="write the variants of the middle elevation here (PNG)")
    args = ap.parse_args()
    from dream3d.priors.loading import load_prior

    torch.manual_seed(0)
    prior = load_prior(args.model, "cpu")
    parsed = vocab.parse_prompt(args.prompt, world=prior.world)
    world, res, n = prior.world, prior.resolution, args.views
    print(f"{prior.name}: '{args.prompt}', {n} views per elevation at {res}px, {args.samples} draws per variant")
    print("| elevation | hole px per view | variant | L_c | L_u - L_c | s* (painted beats open above) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for el in args.elevations:
        cams = orbit_cameras(torch.full((n,), el), torch.arange(n) * (360.0 / n), torch.full((n,), 2.9),
                             torch.full((n,), 45.0), res, res)
        batch = make_labeled_batch(n, res, seed=1, objects=torch.full((n,), world.objects.index(parsed.object)),
                                   colours=torch.full((n,), world.colours.index(parsed.colour)), cameras=cams,
                                   world=world)
        cov = batch.coverage[..., 0]
        holes = enclosed_background(cov)
        variants = {"open": batch.images, "dark inside": painted(batch.images, cov, holes, DARK),
                    "lid": painted(batch.images, cov, holes, 1.0)}
        errors = {k: denoising_errors(prior, v, cams, args.prompt, args.samples) for k, v in variants.items()}
        for k, (c, u) in errors.items():
            s = "" if k == "open" else crossover(errors["open"], (c, u))
            s = "" if k == "open" else ("none" if s is None else f"{s:.1f}")
            print(f"| {el:.0f} | {float(holes.float().sum((1, 2)).mean()):.1f} | {k} | {c:.5f} | {u - c:.5f} | {s} |")
        if args.image and el == args.elevations[len(args.elevations) // 2]:
            import imageio.v3 as iio

            rows = [torch.cat(list(v[:8]), 1) for v in variants.values()]
            iio.imwrite(args.image, (torch.cat(rows, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


if __name__ == "__main__":
    main()
