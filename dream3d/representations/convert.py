"""Turning one stage's result into the next stage's starting point."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dream3d.config import RunConfig
from dream3d.errors import UserError
from dream3d.representations.base import Representation


def _copy(previous, new) -> None:
    """Same kind: carry every parameter over (the new stage's config may freeze some)."""
    new.load_state_dict(previous.state_dict())


def _nerf_to_dmtet(previous, new) -> None:
    """The NeRF's isosurface becomes the tet grid's zero level; its albedo field is kept."""
    new.init_from_density(previous.query_density, previous.cfg.mesh_threshold)
    new.init_texture_from(previous.albedo_field)


@torch.no_grad()
def _nerf_to_gaussians(previous, new, resolution: int = 64) -> None:
    """Gaussians seeded where the NeRF is dense, coloured by its albedo."""
    r = previous.cfg.radius
    axis = torch.linspace(-r, r, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    device = next(previous.parameters()).device
    density = previous.query_density(grid.to(device)).cpu()
    inside = grid[density >= previous.cfg.mesh_threshold]
    if len(inside) == 0:
        raise UserError("the previous NeRF stage is empty (no density above its mesh threshold): nothing to seed Gaussians from")
    gen = torch.Generator().manual_seed(0)
    pick = torch.randint(len(inside), (new.cfg.n_init,), generator=gen)
    cell = 2 * r / (resolution - 1)
    points = inside[pick] + (torch.rand(len(pick), 3, generator=gen) - 0.5) * cell
    colours = previous.albedo(points.to(device))
    new.initialize(points.to(device), colours)


def _gaussians_to_dmtet(previous, new, resolution: int = 96) -> None:
    """The Gaussians' density isosurface (as in their mesh export) becomes the tet grid's zero
    level, and the texture field is fitted to their colours there (density-weighted, as in
    their mesh export), so a texture stage starts from the Gaussians' look."""
    with torch.no_grad():
        density, weighted = previous.surface_grid(resolution)
    peak = float(density.max())
    if not peak > 1e-6:
        raise UserError("the previous Gaussian stage is empty: nothing to build a mesh from")
    level = previous.cfg.mesh_threshold if peak > previous.cfg.mesh_threshold else 0.5 * peak
    bound = previous.cfg.mesh_bound
    fields = torch.cat([density[..., None], weighted], -1).permute(3, 0, 1, 2)[None].float()  # [1, 4, x, y, z]

    def lookup(points: torch.Tensor) -> torch.Tensor:
        """[N, 4] density and density x colour, trilinear; grid_sample indexes (W, H, D) with (x, y, z) -> pass (z, y, x)."""
        g = (points / bound).flip(-1).view(1, -1, 1, 1, 3).to(fields)
        return F.grid_sample(fields, g, align_corners=True, padding_mode="zeros").view(4, -1).t()

    def colour(points: torch.Tensor) -> torch.Tensor:
        d = lookup(points)
        return (d[:, 1:] / d[:, :1].clamp(min=1e-12)).clamp(0.0, 1.0)

    with torch.no_grad():
        new.init_from_density(lambda p: lookup(p)[:, 0], level)
    new.init_texture_from_colours(colour)


# (from, to) -> how; a stage with `init: previous` chains only along these.
CONVERSIONS: dict[tuple[str, str], Callable] = {
    ("hashgrid_nerf", "hashgrid_nerf"): _copy,
    ("dmtet", "dmtet"): _copy,
    ("hashgrid_nerf", "dmtet"): _nerf_to_dmtet,
    ("gaussians", "gaussians"): _copy,
    ("hashgrid_nerf", "gaussians"): _nerf_to_gaussians,
    ("gaussians", "dmtet"): _gaussians_to_dmtet,
}

_NAMES: dict[str, str] = {}  # class name -> registry name, filled on first use


def _registry_name(rep: Representation) -> str:
    if not _NAMES:
        from dream3d import registry

        for entry in registry.entries("representation"):
            _NAMES[entry.target.split(":")[1]] = entry.name
    return _NAMES[type(rep).__name__]


def check_chain(cfg: RunConfig) -> None:
    """Refuse, before any work, a run whose stages cannot chain, naming the stage."""
    for prev, stage in zip(cfg.stages, cfg.stages[1:]):
        if stage.init != "previous":
            continue
        pair = (prev.representation.name, stage.representation.name)
        if pair not in CONVERSIONS:
            allowed = ", ".join(sorted(f"{a} -> {b}" for a, b in CONVERSIONS))
            raise UserError(f"stage '{stage.name}' starts from the previous stage, but {pair[0]} cannot be "
                            f"converted to {pair[1]} (possible: {allowed})")


def convert(previous: Representation, new: Representation) -> None:
    """Initialise `new` in place from `previous`."""
    pair = (_registry_name(previous), _registry_name(new))
    if pair not in CONVERSIONS:
        raise UserError(f"cannot convert {pair[0]} to {pair[1]}")
    CONVERSIONS[pair](previous, new)
