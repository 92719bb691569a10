"""Captioned procedural renders: the embedded prior's training data.

`make_batch(n, resolution, seed)` is the stable entry point (also used by the
evaluation classifier): uniformly random object and colour, random orbit camera
from `CameraConfig()` (the trainer's distribution), random light and grey
background, caption "a {colour} {object}" with a ", {view} view" suffix (from
`view_names`) on about half of the captions. The same seed gives the same batch.
Objects and colours come from a world (`dream3d.priors.worlds`, default tiny-shapes).

Rendering costs about 30 ms per 32x32 image on one core, so training reads
pre-rendered shards (`ShardPool`), written by `python -m dream3d.procedural.dataset`.
Shards store labels, not captions, so view suffixes are re-drawn every time an
image is used.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dream3d.cameras import CameraConfig, orbit_cameras, sample_orbit, view_names
from dream3d.priors.vocab import caption
from dream3d.priors.worlds import TINY_SHAPES, World
from dream3d.procedural.render import TraceConfig, random_lighting, render_scenes
from dream3d.procedural.shapes import N_SHAPE_PARAMS, jitter_colour
from dream3d.types import Cameras

DATA_VERSION = 2
"""Bump when shapes, colours or rendering change, so stale shards are not reused."""
DEFAULT_CACHE = Path(os.environ.get("DREAM3D_CACHE", Path.home() / ".cache" / "dream3d")) / "procedural"


@dataclass
class LabeledBatch:
    images: Tensor  # [N, H, W, 3] in [0, 1]
    captions: list[str]
    cameras: Cameras
    objects: Tensor  # [N] index into the world's objects
    colours: Tensor  # [N] index into the world's colours
    views: list[str]  # view name of each camera (whether or not the caption says it)
    coverage: Tensor | None  # [N, H, W, 1] fraction of each pixel covered by the object (None from shards)


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def make_captions(objects: Tensor, colours: Tensor, cams: Cameras, suffix_prob: float, gen: torch.Generator,
                  world: World = TINY_SHAPES) -> list[str]:
    """Captions for label indices [N]; each gets its camera's view suffix with probability `suffix_prob`."""
    views = view_names(cams.elevation, cams.azimuth)
    with_suffix = (torch.rand(len(views), generator=gen) < suffix_prob).tolist()
    return [
        caption(world.colours[c], world.objects[o], v if s else None)
        for o, c, v, s in zip(objects.tolist(), colours.tolist(), views, with_suffix)
    ]


def make_labeled_batch(
    n: int,
    resolution: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    suffix_prob: float = 0.5,
    objects: Tensor | None = None,  # [n] fixed object indices (default: uniform)
    colours: Tensor | None = None,  # [n] fixed colour indices (default: uniform)
    cameras: Cameras | None = None,  # fixed cameras (default: `sample_orbit(CameraConfig())`)
    world: World = TINY_SHAPES,
) -> LabeledBatch:
    """Render n random labelled scenes of the world's objects and colours at `resolution` (square)."""
    gen = _generator(seed, generator)
    obj = torch.randint(len(world.objects), (n,), generator=gen) if objects is None else objects.long()
    col = torch.randint(len(world.colours), (n,), generator=gen) if colours is None else colours.long()
    cams = sample_orbit(CameraConfig(), n, resolution, resolution, gen) if cameras is None else cameras
    u = torch.rand(n, N_SHAPE_PARAMS, generator=gen)
    main = jitter_colour([world.colours[c] for c in col.tolist()], gen)
    light = random_lighting(cams, gen)
    captions = make_captions(obj, col, cams, suffix_prob, gen, world)
    images, coverage = render_scenes([world.objects[o] for o in obj.tolist()], u, main, cams, light, TraceConfig())
    return LabeledBatch(images, captions, cams, obj, col, view_names(cams.elevation, cams.azimuth), coverage)


def make_batch(
    n: int, resolution: int, seed: int | None = None, generator: torch.Generator | None = None,
    world: World = TINY_SHAPES,
) -> tuple[Tensor, list[str], Cameras]:
    """(images [N, H, W, 3] in [0, 1], captions, cameras) of n random scenes of the world; reproducible
    from `seed` (or drawn from `generator`). Captions are "a {colour} {object}" (English article), half
    of them followed by ", {front|side|back|overhead} view"."""
    b = make_labeled_batch(n, resolution, seed=seed, generator=generator, world=world)
    return b.images, b.captions, b.cameras


# ---------------------------------------------------------------------------- shards on disk


def world_root(root: Path | None, world: World) -> Path | None:
    """The cache root of a world's shards: `root` itself for tiny-shapes (where its shards always
    were), a sub-folder named after the world otherwise."""
    if world.name == TINY_SHAPES.name:
        return root
    return Path(root or DEFAULT_CACHE) / world.name


def shard_dir(resolution: int, root: Path | None = None) -> Path:
    return Path(root or DEFAULT_CACHE) / f"r{resolution}-v{DATA_VERSION}"


def shard_path(index: int, resolution: int, root: Path | None = None) -> Path:
    return shard_dir(resolution, root) / f"shard-{index:05d}.npz"


def write_shard(index: int, size: int, resolution: int, root: Path | None = None, chunk: int = 128,
                world: World = TINY_SHAPES) -> Path:
    """Render shard `index` of the world (seeded by its index) and write it atomically; returns its path."""
    path = shard_path(index, resolution, world_root(root, world))
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1_000_003 * (index + 1))
    parts = [make_labeled_batch(min(chunk, size - s), resolution, generator=gen, world=world)
             for s in range(0, size, chunk)]
    return save_shard(path, parts)


def save_shard(path: Path, parts: list[LabeledBatch]) -> Path:
    """Write the batches' images (8-bit), labels and cameras to `path` atomically; returns it."""
    cams = [p.cameras for p in parts]
    arrays = {
        "images": (torch.cat([p.images for p in parts]) * 255.0).round().to(torch.uint8).numpy(),
        "objects": torch.cat([p.objects for p in parts]).numpy().astype(np.int16),
        "colours": torch.cat([p.colours for p in parts]).numpy().astype(np.int16),
        "elevation": torch.cat([c.elevation for c in cams]).numpy(),
        "azimuth": torch.cat([c.azimuth for c in cams]).numpy(),
        "distance": torch.cat([c.distance for c in cams]).numpy(),
        "fov_deg": torch.rad2deg(torch.cat([c.fov_y for c in cams])).numpy(),
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


class ShardPool:
    """All shards of one resolution held in memory; samples training batches from them.

    `sample` mirrors half of the images left-right together with their cameras
    (azimuth -> -azimuth): every object is symmetric under x -> -x up to its random
    proportions, so a mirrored render is another valid sample with a consistent camera.
    The shards are the world's (`world_root`); `root` is the cache root of every world.
    """

    def __init__(self, resolution: int, root: Path | None = None, world: World = TINY_SHAPES):
        self.resolution = resolution
        self.world = world
        self.root = world_root(root, world)
        self.loaded: set[Path] = set()
        self.arrays: dict[str, np.ndarray] = {}
        self.refresh()

    def directory(self) -> Path:
        """Where this pool's shards are (grouped pools keep theirs elsewhere)."""
        return shard_dir(self.resolution, self.root)

    def refresh(self) -> int:
        """Load shards written since the last call; returns the number of images held."""
        new = sorted(p for p in self.directory().glob("shard-*.npz") if p not in self.loaded)
        for p in new:
            if p.name.endswith(".tmp.npz"):
                continue
            with np.load(p) as data:
                for k in data.files:
                    self.arrays[k] = np.concatenate([self.arrays[k], data[k]]) if k in self.arrays else data[k]
            self.loaded.add(p)
        return len(self)

    def __len__(self) -> int:
        return 0 if not self.arrays else len(self.arrays["objects"])

    def sample(self, n: int, gen: torch.Generator, suffix_prob: float = 0.5, mirror: bool = True) -> LabeledBatch:
        if len(self) == 0:
            raise RuntimeError(f"no shards in {self.directory()}")
        idx = torch.randint(len(self), (n,), generator=gen).numpy()
        a = {k: torch.from_numpy(v[idx]) for k, v in self.arrays.items()}
        images = a["images"].float() / 255.0
        azimuth = a["azimuth"].float()
        flip = torch.rand(n, generator=gen) < (0.5 if mirror else 0.0)
        images = torch.where(flip[:, None, None, None], images.flip(2), images)
        azimuth = torch.where(flip, -azimuth, azimuth)
        r = self.resolution
        cams = orbit_cameras(a["elevation"].float(), azimuth, a["distance"].float(), a["fov_deg"].float(), r, r)
        obj, col = a["objects"].long(), a["colours"].long()
        captions = make_captions(obj, col, cams, suffix_prob, gen, self.world)
        return LabeledBatch(images, captions, cams, obj, col, view_names(cams.elevation, cams.azimuth),
                            None)

    def sample_views(self, n: int, gen: torch.Generator, suffix_prob: float = 0.5, mirror: bool = True) -> LabeledBatch:
        """n single images, each with its own caption and camera, whatever the pool (a grouped pool's
        `sample` returns whole groups)."""
        return ShardPool.sample(self, n, gen, suffix_prob, mirror)


def main() -> None:
    ap = argparse.ArgumentParser(description="Pre-render procedural training shards.")
    ap.add_argument("--shards", type=int, default=8, help="number of shards (indices 0..N-1)")
    ap.add_argument("--size", type=int, default=2048, help="images per shard")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--root", type=Path, default=None, help=f"cache root (default {DEFAULT_CACHE})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--world", default=TINY_SHAPES.name, help="the world to render (dream3d.priors.worlds)")
    ap.add_argument("--views", type=int, default=1,
                    help="1: single views; N > 1: grouped shards, N views of one scene (size / N groups)")
    args = ap.parse_args()
    from dream3d.priors.worlds import get_world
    from dream3d.procedural.groups import group_shard_path, write_group_shard

    world = get_world(args.world)
    torch.set_num_threads(args.threads)
    for i in range(args.shards):  # existing shards are kept, so an interrupted run continues
        if args.views > 1:
            if group_shard_path(i, args.resolution, args.views, world_root(args.root, world)).exists():
                continue
            t0 = time.time()
            path = write_group_shard(i, args.size // args.views, args.resolution, args.views, args.root, world=world)
        else:
            if shard_path(i, args.resolution, world_root(args.root, world)).exists():
                continue
            t0 = time.time()
            path = write_shard(i, args.size, args.resolution, args.root, world=world)
        print(f"{path} {args.size} images in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
