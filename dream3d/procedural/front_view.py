"""A procedural object photographed from the front, as an RGBA image: the input image-to-3D
(`generate --image`) is measured with, since the embedded prior knows the object and the
shipped classifier can read the result."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dream3d.cameras.orbit import orbit_cameras
from dream3d.procedural.render import Lighting, TraceConfig, render_scenes
from dream3d.procedural.shapes import COLOURS, N_SHAPE_PARAMS


def front_view(obj: str, colour: str, resolution: int = 256, elevation: float = 0.0, distance: float = 2.9,
               fov: float = 45.0, ambient: float = 0.4) -> np.ndarray:
    """[H, W, 4] uint8 RGBA of `colour` `obj` with mid-range shape parameters, lit from the camera
    (the turntable's head-light, `ambient` as the representations' own), transparent around it."""
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    cams = orbit_cameras(one(elevation), one(0.0), one(distance), one(fov), resolution, resolution)
    eye = cams.c2w[:, :3, 3]
    light = Lighting(eye / eye.norm(dim=-1, keepdim=True), one(ambient), one(0.0))  # black background
    u = torch.full((1, N_SHAPE_PARAMS), 0.5)
    img, cov = render_scenes([obj], u, torch.tensor([COLOURS[colour]]), cams, light, TraceConfig())
    # on black, the supersampled edge pixels hold colour x coverage: divide it out (straight alpha)
    rgb = torch.where(cov > 0, img / cov.clamp_min(1e-6), torch.zeros_like(img)).clamp(0, 1)
    rgba = torch.cat([rgb, cov], dim=-1)[0]
    return (rgba.numpy() * 255).round().astype(np.uint8)


def write_front_view(path: Path, obj: str, colour: str, resolution: int = 256, **kw) -> Path:
    Image.fromarray(front_view(obj, colour, resolution, **kw), mode="RGBA").save(path)
    return Path(path)


if __name__ == "__main__":
    import sys

    out, obj, colour = sys.argv[1], sys.argv[2], sys.argv[3]
    res = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    print(write_front_view(Path(out), obj, colour, res))
