"""A contact sheet of a world's objects: one labelled render per object, to look at.

    python -m dream3d.procedural.sheet --world toy-world --out sheet.png [--new-only] [--size 64]

Each object is drawn from a front three-quarter view (azimuth 35, elevation 20, as a
viewer first sees an object that faces +Z) in the world's colours taken in turn, with
middle proportions (u = 0.5) so the sheet shows each object's typical shape.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dream3d.cameras import orbit_cameras
from dream3d.priors.worlds import DEFAULT_WORLD, WORLDS, World, get_world
from dream3d.procedural.render import Lighting, render_scenes
from dream3d.procedural.shapes import COLOURS, N_SHAPE_PARAMS


def render_sheet(objects: list[str], colours: list[str], size: int = 64, cols: int = 8) -> Image.Image:
    """One tile per object (colour i % len(colours)), its name written under it."""
    n = len(objects)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    cams = orbit_cameras(full(20.0), full(35.0), full(2.9), full(45.0), size, size)
    towards = torch.nn.functional.normalize(cams.c2w[:, :3, 2] + torch.tensor([0.3, 0.8, 0.0]), dim=-1)
    light = Lighting(towards, full(0.4), full(0.7))  # from the camera's side and above
    names = [colours[i % len(colours)] for i in range(n)]
    main = torch.tensor([COLOURS[c] for c in names])
    images, _ = render_scenes(objects, torch.full((n, N_SHAPE_PARAMS), 0.5), main, cams, light)
    label = 12
    rows = (n + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * (size + label)), (255, 255, 255))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for i, (obj, img) in enumerate(zip(objects, images)):
        x, y = (i % cols) * size, (i // cols) * (size + label)
        sheet.paste(Image.fromarray((img.numpy() * 255).round().astype(np.uint8)), (x, y))
        draw.text((x + 2, y + size), obj, fill=(0, 0, 0), font=font)
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description="Render a contact sheet of a world's objects.")
    ap.add_argument("--world", default="toy-world", help=f"one of {', '.join(WORLDS)}")
    ap.add_argument("--out", type=Path, default=Path("world_sheet.png"))
    ap.add_argument("--size", type=int, default=64, help="tile side in pixels")
    ap.add_argument("--new-only", action="store_true", help=f"only the objects that {DEFAULT_WORLD} lacks")
    args = ap.parse_args()
    world: World = get_world(args.world)
    base = set(get_world(DEFAULT_WORLD).objects)
    objects = [o for o in world.objects if not (args.new_only and o in base)]
    render_sheet(objects, list(world.colours), args.size).save(args.out)
    print(f"{args.out}: {len(objects)} objects of {world.name}")


if __name__ == "__main__":
    main()
