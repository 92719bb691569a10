"""What every 3D representation provides to the trainer and the exporters.

Required: `render`, `param_groups`, `extract_mesh`; the representation's config dataclass
carries `lr` (a learning rate per parameter group) and `loss_weights` (a weight per term
its renders report in `RenderOutput.extras`; an unnamed term stops the run). Optional capabilities are methods
declared here with a documented default; a representation has one when it overrides
the method, which `has(...)` reports. Callers ask `has`, never `hasattr`, so a
misspelt override is caught by the registry test rather than silently skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, ClassVar
from torch import Tensor, nn

from dream3d.types import Cameras, Mesh, RenderOutput

CAPABILITIES = ("albedo", "save_splats", "source_mesh", "occupancy_at")


class Representation(nn.Module):
    albedo_inset: ClassVar[float] = 0.0
    """How far inside its extracted surface the albedo field is read when a texture is baked, as
    a fraction of the mesh's bounding-box diagonal: 0 for an explicit surface, whose field is
    trained on the surface itself; a volume's isosurface lies in its fuzzy edge."""
    is_explicit_surface: ClassVar[bool] = False
    """True when the representation is a triangle surface that its exported mesh reproduces (up to
    clean-up and smoothing): its turntable then shows the exported mesh file itself. A volume or
    splats are their own asset and show themselves."""

    def render(self, cams: Cameras, background: Tensor, shading: str = "diffuse", light_dir: Tensor | None = None) -> RenderOutput:
        """Render every camera. background [B, 3] solid colours in [0, 1]; shading is
        "diffuse" (albedo x (ambient + diffuse)), "albedo" (unlit) or "textureless"
        (white albedo, shading only); light_dir [B, 3] unit vectors towards the light."""
        raise NotImplementedError

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by group name; learning rates are set per group in the config."""
        raise NotImplementedError

    def on_step(self, step: int, progress: float, out: RenderOutput, optimizer=None) -> None:
        """Called after each optimiser step (occupancy-grid update; densification, which
        also updates `optimizer` when parameters change shape)."""

    def extract_mesh(self, resolution: int) -> Mesh:
        """A coloured triangle mesh of the surface."""
        raise NotImplementedError

    # ------------------------------------------------------------ optional capabilities
    def albedo(self, points: Tensor) -> Tensor:
        """Optional: an albedo field, [N, 3] in [0, 1] at world points [N, 3]. With it the
        exporter bakes textures from the field itself; without it, from the mesh's vertex colours."""
        raise NotImplementedError(f"{type(self).__name__} has no albedo field")

    def save_splats(self, path: Path) -> Path:
        """Optional: write the representation as a standard 3DGS PLY for splat viewers; returns the path."""
        raise NotImplementedError(f"{type(self).__name__} has no splats to save")

    def source_mesh(self) -> tuple[Mesh, Callable[[Tensor], Tensor]]:
        """Optional: a surface given by the user, to be exported exactly as given: (the mesh in its
        own coordinates, with its UVs if any; a map of its points [N, 3] into this representation's
        frame). With it the export skips clean-up, smoothing and decimation, writes these vertices
        and bakes the albedo into the mesh's UVs (xatlas ones when it has none)."""
        raise NotImplementedError(f"{type(self).__name__} has no mesh given by the user")

    def occupancy_at(self, points: Tensor) -> Tensor:
        """Optional: a differentiable occupancy in [0, 1], [N] at world points [N, 3] (one half on the
        exported surface). With it a run can take a shape guide (`--shape`)."""
        raise NotImplementedError(f"{type(self).__name__} has no occupancy field (occupancy_at)")

    @classmethod
    def has(cls, capability: str) -> bool:
        """True when this representation provides the optional `capability` (one of CAPABILITIES)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; expected one of {', '.join(CAPABILITIES)}")
        return getattr(cls, capability) is not getattr(Representation, capability)
