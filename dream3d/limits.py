"""Ranges of the seed and the export settings, and the memory an export would need.

One place for these checks: `config.validate` runs the range checks when a config
is built (so a bad export setting fails before training, not after it), the
`export` command runs them on its flags before loading anything, and
`pipeline.export_run` / `pipeline.generate` compare the memory the isosurface
grid, the texture bake and the turntable would need with the memory available,
before anything is allocated. No heavy imports: the config module uses this one.

The memory figures are estimates measured on the CPU path (peak resident memory
of a hash-grid NeRF export, 2026-12-01): about 40-60 bytes per isosurface grid
point, 170-220 bytes per texel baked, and for the turntable the frames kept for
the video plus one render batch. They exist to refuse settings that cannot fit
(petabytes), not to predict the peak exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dream3d.atomic import human_bytes
from dream3d.errors import UserError

SEED_MAX = 2**32 - 1  # seeds become torch seeds as seed * 1000 + stage index: far inside 64 bits


@dataclass(frozen=True)
class Range:
    low: int
    high: int
    zero: str | None = None  # what 0 means, when 0 is allowed besides [low, high]

    def text(self) -> str:
        span = f"between {self.low} and {self.high}"
        return f"0 ({self.zero}) or {span}" if self.zero else span


EXPORT_RANGES: dict[str, Range] = {
    "mesh_resolution": Range(8, 2048),
    "decimate_faces": Range(4, 100_000_000, zero="keep all faces"),
    "texture_size": Range(16, 16384, zero="vertex colours only"),
    "video_resolution": Range(16, 4096),
    "video_frames": Range(1, 100_000),
    "smooth_iterations": Range(1, 100_000, zero="no smoothing"),
    "max_hole_edges": Range(3, 100_000_000, zero="leave holes open"),
}
FRACTION_KEYS = ("min_component_fraction",)  # export settings that are a share in [0, 1]

GRID_BYTES_PER_POINT = 48
TEXTURE_BYTES_PER_TEXEL = 220
FRAME_BYTES_PER_PIXEL = 32  # rgb, alpha, normal and depth renders kept as float32
PANEL_BYTES_PER_PIXEL = 24  # each panel's float picture, its uint8 copy and the side-by-side frames
RENDER_BYTES_PER_PIXEL = 1024  # one render batch (4 views) of a radiance field, per pixel of one view
RENDER_BATCH = 4


def _name(key: str, names: Mapping[str, str] | None) -> str:
    return (names or {}).get(key, f"export.{key}")


def check_seed(seed: Any, name: str = "seed") -> None:
    if type(seed) is not int or not 0 <= seed <= SEED_MAX:
        raise UserError(f"{name} must be an integer between 0 and {SEED_MAX} (2**32 - 1), got {_short(seed)}")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_export_values(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Range-check the export settings present in `values` (field -> value; None = not given).
    `names` maps a field to the name the user typed it under (e.g. "--resolution")."""
    for key, rng in EXPORT_RANGES.items():
        value = values.get(key)
        if value is None:
            continue
        ok = type(value) is int and (rng.low <= value <= rng.high or (rng.zero is not None and value == 0))
        if not ok:
            raise UserError(f"{_name(key, names)} must be {rng.text()}, got {_short(value)}")
    for key in FRACTION_KEYS:
        value = values.get(key)
        if value is None:
            continue
        if type(value) not in (int, float) or not 0.0 <= value <= 1.0:  # NaN fails the comparison too
            raise UserError(f"{_name(key, names)} must be a number between 0 and 1, got {_short(value)}")


def check_export(export: Any, names: Mapping[str, str] | None = None) -> None:
    """Range-check an ExportConfig (or anything with its fields)."""
    check_export_values({k: getattr(export, k, None) for k in (*EXPORT_RANGES, *FRACTION_KEYS)}, names)


# ---------------------------------------------------------------- memory
def available_memory() -> int | None:
    """Bytes this process can still allocate: the least of the memory the system reports
    available, the cgroup (container) limit less its usage, and the address-space limit
    (ulimit -v). None when none of them is known."""
    limits = []
    try:
        import psutil

        limits.append(int(psutil.virtual_memory().available))
    except Exception:  # psutil missing or unable to read: fall back to /proc/meminfo
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            pass
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(max(int(limit) - int((cg / "memory.current").read_text()), 0))
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(max(soft - _address_space_used(), 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def _address_space_used() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def export_memory(export: Any) -> dict[str, tuple[int, str]]:
    """Estimated peak bytes of each export step: {field: (bytes, what)}; only the steps the
    settings ask for."""
    need: dict[str, tuple[int, str]] = {}
    formats = set(getattr(export, "formats", ()) or ())
    if export.mesh and formats:
        r = export.mesh_resolution + 2  # the grid is padded by one cell on each side
        need["mesh_resolution"] = (r**3 * GRID_BYTES_PER_POINT, f"a {export.mesh_resolution}^3 isosurface grid")
        if export.texture_size and formats & {"glb", "obj"}:
            t = export.texture_size
            need["texture_size"] = (t * t * TEXTURE_BYTES_PER_TEXEL, f"baking a {t}x{t} texture")
    if export.video:
        px = export.video_resolution**2
        panels = max(len(getattr(export, "video_panels", ()) or ()), 1)
        frames = export.video_frames * px * (FRAME_BYTES_PER_PIXEL + PANEL_BYTES_PER_PIXEL * panels)
        render = min(RENDER_BATCH, export.video_frames) * px * RENDER_BYTES_PER_PIXEL
        need["video_resolution"] = (frames + render, f"a turntable of {export.video_frames} frames at "
                                    f"{export.video_resolution}x{export.video_resolution}")
    return need


def check_memory(export: Any, names: Mapping[str, str] | None = None, available: int | None = None) -> None:
    """Refuse export settings whose largest step would need more memory than is available."""
    available = available_memory() if available is None else available
    if available is None:
        return
    for key, (needed, what) in sorted(export_memory(export).items(), key=lambda kv: -kv[1][0]):
        if needed > available:
            shown = {"video_resolution": ("video_resolution", "video_frames")}.get(key, (key,))
            setting = ", ".join(f"{_name(k, names)} {getattr(export, k)}" for k in shown)
            raise UserError(f"{setting}: {what} needs about {human_bytes(needed)} of memory, "
                            f"and {human_bytes(available)} is available")
