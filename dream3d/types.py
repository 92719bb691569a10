"""Plain data passed between components.

Conventions: world +Y up, objects face +Z; camera-to-world matrices with the
camera looking down -Z and +Y up (OpenGL / glTF). Images are channel-last
`[B, H, W, C]` floats in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

MESH_FORMATS = ("glb", "obj", "ply")  # the mesh files an export writes
VIDEO_PANELS = ("rgb", "normal", "depth")  # the turntable's possible panels, side by side
MeshFormat = Literal[MESH_FORMATS]  # the config checks values against these
VideoPanel = Literal[VIDEO_PANELS]


@dataclass
class Cameras:
    """A batch of pinhole cameras."""

    c2w: Tensor  # [B, 4, 4] camera-to-world
    fov_y: Tensor  # [B] vertical field of view, radians
    width: int
    height: int
    elevation: Tensor  # [B] degrees, above the XZ plane
    azimuth: Tensor  # [B] degrees, 0 = on +Z (the object's front), increasing towards +X
    distance: Tensor  # [B] distance from the origin

    @property
    def batch_size(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def focal(self) -> Tensor:
        """[B] focal length in pixels."""
        return 0.5 * self.height / torch.tan(0.5 * self.fov_y)

    def rays(self) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions through pixel centres, each [B, H, W, 3]."""
        B, H, W = self.batch_size, self.height, self.width
        dev, dt = self.c2w.device, self.c2w.dtype
        j, i = torch.meshgrid(
            torch.arange(H, device=dev, dtype=dt) + 0.5,
            torch.arange(W, device=dev, dtype=dt) + 0.5,
            indexing="ij",
        )
        f = self.focal().view(B, 1, 1)
        x = (i - 0.5 * W) / f  # [B, H, W]
        y = -(j - 0.5 * H) / f  # image rows go down, camera +Y goes up
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
        d_world = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], d_cam)
        d_world = d_world / d_world.norm(dim=-1, keepdim=True)
        origins = self.c2w[:, None, None, :3, 3].expand(B, H, W, 3)
        return origins, d_world

    def pose_features(self) -> Tensor:
        """[B, 16] flattened camera-to-world with translation divided by a nominal
        radius, the camera conditioning fed to camera-aware priors (zeros = none)."""
        m = self.c2w.clone()
        m[:, :3, 3] = m[:, :3, 3] / 3.0
        return m.reshape(-1, 16)

    def to(self, device) -> "Cameras":
        return Cameras(
            self.c2w.to(device), self.fov_y.to(device), self.width, self.height,
            self.elevation.to(device), self.azimuth.to(device), self.distance.to(device),
        )

    def __getitem__(self, idx) -> "Cameras":
        sl = idx if isinstance(idx, slice) else slice(idx, idx + 1)
        return Cameras(
            self.c2w[sl], self.fov_y[sl], self.width, self.height,
            self.elevation[sl], self.azimuth[sl], self.distance[sl],
        )


@dataclass
class RenderOutput:
    """What a representation's `render` returns."""

    rgb: Tensor  # [B, H, W, 3] composited over the background, in [0, 1]
    alpha: Tensor  # [B, H, W, 1] accumulated opacity
    depth: Tensor  # [B, H, W, 1] expected ray distance (0 where empty)
    normal: Tensor | None = None  # [B, H, W, 3] world-space normals, in [-1, 1]
    extras: dict[str, Tensor] = field(default_factory=dict)  # e.g. regulariser terms
    info: dict = field(default_factory=dict)  # what the representation's on_step needs from this render (gsplat's info)


@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar; its gradient w.r.t. the render is the update rule's
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class Mesh:
    vertices: Tensor  # [V, 3] float
    faces: Tensor  # [F, 3] long
    vertex_colors: Tensor | None = None  # [V, 3] in [0, 1]
    uv: Tensor | None = None  # [V, 2] in [0, 1]
    texture: Tensor | None = None  # [H, W, 3] in [0, 1]
