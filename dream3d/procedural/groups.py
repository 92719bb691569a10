"""Grouped renders for the joint multi-view prior: one scene seen from N cameras.

`make_group_batch(groups, resolution, views=4)` draws per group one object, colour,
set of proportions and background grey, and cameras exactly as the 3D trainer
renders groups for multi-view guidance (`guidance.view_groups.expand_cameras`): one
elevation, distance and field of view from `CameraConfig()` (the single-view
distribution), azimuths a, a + 90, a + 180, a + 270 from a random start a, laid out
group-major. Each view is lit from near its own camera, as single views are and as
the trainer lights its renders, so every view on its own is a sample of the
single-view data. Captions: with probability `suffix_prob` per group every view
carries its own view suffix, otherwise all read the plain caption (MVDream gives a
group one text).

Grouped shards (`write_group_shard`, `GroupShardPool`) store the rows group-major
beside the single-view shards; the pool samples whole groups. Objects and colours come
from a world (`dream3d.priors.worlds`, default tiny-shapes), as in `dataset`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dream3d.cameras import CameraConfig, orbit_cameras, sample_orbit, view_names
from dream3d.guidance.view_groups import ViewGroup, expand_cameras
from dream3d.priors.vocab import caption
from dream3d.priors.worlds import TINY_SHAPES, World
from dream3d.procedural.dataset import LabeledBatch, ShardPool, _generator, save_shard, shard_dir, world_root
from dream3d.procedural.render import TraceConfig, random_lighting, render_scenes
from dream3d.procedural.shapes import N_SHAPE_PARAMS, jitter_colour
from dream3d.types import Cameras

AZIMUTH_STEP = 90.0
"""Degrees between consecutive views of a group (MVDream's four orthogonal views)."""


def group_captions(objects: Tensor, colours: Tensor, cams: Cameras, views: int, suffix_prob: float,
                   gen: torch.Generator, world: World = TINY_SHAPES) -> list[str]:
    """Captions for group-major rows (labels [G*N]): per group, either every view with its own view
    suffix (probability `suffix_prob`) or all plain."""
    names = view_names(cams.elevation, cams.azimuth)
    suffixed = (torch.rand(len(names) // views, generator=gen) < suffix_prob).repeat_interleave(views).tolist()
    return [caption(world.colours[c], world.objects[o], v if s else None)
            for o, c, v, s in zip(objects.tolist(), colours.tolist(), names, suffixed)]


def make_group_batch(groups: int, resolution: int, views: int = 4, seed: int | None = None,
                     generator: torch.Generator | None = None, suffix_prob: float = 0.5,
                     azimuth_step: float = AZIMUTH_STEP, world: World = TINY_SHAPES) -> LabeledBatch:
    """Render `groups` random scenes of the world from `views` cameras each: a batch of groups * views,
    group-major."""
    gen = _generator(seed, generator)
    rep = lambda v: v.repeat_interleave(views, 0)  # noqa: E731 - per group -> per view
    obj = torch.randint(len(world.objects), (groups,), generator=gen)
    col = torch.randint(len(world.colours), (groups,), generator=gen)
    cams = expand_cameras(sample_orbit(CameraConfig(), groups, resolution, resolution, gen),
                          ViewGroup(views, azimuth_step))
    u = torch.rand(groups, N_SHAPE_PARAMS, generator=gen)
    main = jitter_colour([world.colours[c] for c in col.tolist()], gen)
    light = random_lighting(cams, gen)
    light.background = rep(light.background[::views])  # one background per group, as the trainer draws it
    obj, col = rep(obj), rep(col)
    captions = group_captions(obj, col, cams, views, suffix_prob, gen, world)
    images, coverage = render_scenes([world.objects[o] for o in obj.tolist()], rep(u), rep(main), cams, light,
                                     TraceConfig())
    return LabeledBatch(images, captions, cams, obj, col, view_names(cams.elevation, cams.azimuth), coverage)


# ---------------------------------------------------------------------------- shards on disk


def group_shard_dir(resolution: int, views: int = 4, root: Path | None = None) -> Path:
    single = shard_dir(resolution, root)
    return single.with_name(f"{single.name}-groups{views}")


def group_shard_path(index: int, resolution: int, views: int = 4, root: Path | None = None) -> Path:
    return group_shard_dir(resolution, views, root) / f"shard-{index:05d}.npz"


def write_group_shard(index: int, groups: int, resolution: int, views: int = 4, root: Path | None = None,
                      chunk: int = 32, world: World = TINY_SHAPES) -> Path:
    """Render grouped shard `index` of the world (seeded by its index) and write it atomically; returns its path."""
    path = group_shard_path(index, resolution, views, world_root(root, world))
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(2_000_003 * (index + 1))  # apart from the single-view shards' seeds
    parts = [make_group_batch(min(chunk, groups - s), resolution, views, generator=gen, world=world)
             for s in range(0, groups, chunk)]
    return save_shard(path, parts)


class GroupShardPool(ShardPool):
    """Grouped shards held in memory; `sample(groups, ...)` returns whole groups, group-major.
    Half of the groups are mirrored left-right with their cameras, all views together."""

    def __init__(self, resolution: int, root: Path | None = None, views: int = 4, world: World = TINY_SHAPES):
        self.views = views
        super().__init__(resolution, root, world)

    def directory(self) -> Path:
        return group_shard_dir(self.resolution, self.views, self.root)

    def sample(self, groups: int, gen: torch.Generator, suffix_prob: float = 0.5, mirror: bool = True) -> LabeledBatch:
        if len(self) == 0:
            raise RuntimeError(f"no grouped shards in {self.directory()}")
        n = self.views
        g = torch.randint(len(self) // n, (groups,), generator=gen)
        idx = (g[:, None] * n + torch.arange(n)).reshape(-1).numpy()
        a = {k: torch.from_numpy(v[idx]) for k, v in self.arrays.items()}
        flip = (torch.rand(groups, generator=gen) < (0.5 if mirror else 0.0)).repeat_interleave(n)
        images = a["images"].float() / 255.0
        images = torch.where(flip[:, None, None, None], images.flip(2), images)
        azimuth = torch.where(flip, -a["azimuth"].float(), a["azimuth"].float())
        r = self.resolution
        cams = orbit_cameras(a["elevation"].float(), azimuth, a["distance"].float(), a["fov_deg"].float(), r, r)
        obj, col = a["objects"].long(), a["colours"].long()
        captions = group_captions(obj, col, cams, n, suffix_prob, gen, self.world)
        return LabeledBatch(images, captions, cams, obj, col, view_names(cams.elevation, cams.azimuth), None)
