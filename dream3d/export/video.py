"""Turntable videos: MP4 (H.264 through imageio-ffmpeg's ffmpeg) and a looping GIF (which
`write_turntable` scales down to GIF_MAX_HEIGHT rows), plus helpers that turn normal and
depth renders into pictures for side-by-side panels.

Every function takes numpy arrays or torch tensors, channel-last. The writers take an
optional `FileGroup` (dream3d.atomic): the files are then only staged, and move into
place with the rest of the group (a run's export replaces its mesh and video files together).
"""
from __future__ import annotations

import errno
import io
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dream3d.atomic import FileGroup, is_disk_full


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()  # keep uint8 as uint8
    return np.asarray(x)


def to_uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """[N, H, W, C] (C = 1, 3 or 4; uint8, or float in [0, 1]) -> [N, H, W, 3] uint8.
    Alpha is dropped (composite before calling), grey is repeated."""
    x = _numpy(frames)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or x.shape[0] == 0:
        raise ValueError(f"frames must be [N, H, W, 1|3|4] with N > 0, got {x.shape}")
    if x.dtype != np.uint8:
        # In torch, in place on one float32 copy: numpy's chain of temporaries took seconds per 512 px turntable.
        t = torch.from_numpy(np.array(x, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise ValueError("frames contain NaN or infinite values")
        x = t.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x[..., :3])


def pad_to_multiple(frames: np.ndarray, multiple: int = 2) -> np.ndarray:
    """Pad [N, H, W, 3] on the bottom and right by repeating the edge, so H and W are
    multiples of `multiple` (H.264 in yuv420p needs even sizes)."""
    n, h, w, _ = frames.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


class _FFmpeg:
    """ffmpeg reading raw RGB frames on stdin and writing an H.264 / yuv420p MP4: the command
    imageio-ffmpeg builds, run here so that its exit status and messages are checked (imageio
    ignores them, so a full disk gave a truncated file and ffmpeg's lines on the terminal)."""

    def __init__(self, path: Path, width: int, height: int, fps: float, quality: float):
        import imageio_ffmpeg

        crf = int((1 - quality / 10.0) * 51)  # imageio's mapping of quality 0-10 to x264's CRF
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
               "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
               "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf), "-v", "error",
               "-movflags", "+faststart", str(path)]
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: ffmpeg can never block on it
        # Its own session: a Ctrl-C in the terminal reaches dream3d, which stops ffmpeg itself.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)

    def append(self, frame: np.ndarray) -> None:
        try:
            self.proc.stdin.write(frame.tobytes())
        except (BrokenPipeError, OSError):
            self.close()  # ffmpeg stopped: raise with its reason
            raise OSError("ffmpeg stopped reading frames") from None

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        rc = self.proc.wait()
        self.log.seek(0)
        lines = [ln.strip() for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
        self.log.close()
        if rc != 0 or any(is_disk_full(OSError(ln)) for ln in lines):
            reason = next((ln for ln in lines if is_disk_full(OSError(ln))), lines[-1] if lines else f"exit status {rc}")
            code = errno.ENOSPC if is_disk_full(OSError(reason)) else errno.EIO
            raise OSError(code, f"ffmpeg could not write the MP4: {reason}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if not self.log.closed:
            self.log.close()


def write_mp4(frames: torch.Tensor | np.ndarray, path: str | Path, fps: float = 24.0, quality: float = 8.0,
              group: FileGroup | None = None) -> Path:
    """H.264 / yuv420p MP4 that browsers and phones play; odd sizes are padded to even."""
    video = pad_to_multiple(to_uint8_frames(frames), 2)
    path = Path(path)

    def encode(tmp: Path) -> None:
        writer = _FFmpeg(tmp, video.shape[2], video.shape[1], fps, quality)
        try:
            for frame in video:
                writer.append(frame)
        except BaseException:
            writer.kill()
            raise
        writer.close()

    return _stage(path, group, lambda g: g.stage(path, encode))


GIF_MAX_HEIGHT = 256
"""Rows a turntable GIF is scaled down to (the MP4 keeps the full size). The GIF is the
fallback where a browser cannot play the MP4; at the default 512 pixels per panel a
full-size GIF of 60 frames (1024x512) was 4.3 MB and took 4.3-5.5 s to quantise on our CPU,
against 1.4 MB and 1.4 s at 512x256 (2026-12-01)."""


def shrink(frames: np.ndarray, max_height: int | None) -> np.ndarray:
    """uint8 frames [N, H, W, 3] scaled down (box filter: the average of the pixels each
    output pixel covers) so that H <= max_height, keeping the aspect ratio; unchanged when
    already small enough or max_height is None. An even factor keeps side-by-side panels
    apart: each output pixel then averages pixels of one panel."""
    n, h, w, _ = frames.shape
    if max_height is None or h <= max_height:
        return frames
    if max_height < 1:
        raise ValueError(f"max_height must be positive, got {max_height}")
    size = (max(1, round(w * max_height / h)), max_height)
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BOX)) for f in frames])


def encode_gif(frames: torch.Tensor | np.ndarray, fps: float = 24.0, max_height: int | None = None) -> bytes:
    """Looping GIF bytes, a 256-colour palette per frame (a palette shared by the whole video
    posterises colourful panels such as the normal map about three times as much).
    GIF stores delays in 1/100 s, so the frame rate is rounded to that; pillow merges
    identical consecutive frames. max_height: scale taller frames down (see `shrink`)."""
    video = shrink(to_uint8_frames(frames), max_height)
    images = [Image.fromarray(f).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
              for f in video]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000.0 / fps), loop=0, optimize=False)
    return buf.getvalue()


def write_gif(frames: torch.Tensor | np.ndarray, path: str | Path, fps: float = 24.0,
              group: FileGroup | None = None, max_height: int | None = None) -> Path:
    """A looping GIF file (see `encode_gif`)."""
    path = Path(path)
    data = encode_gif(frames, fps, max_height)
    return _stage(path, group, lambda g: g.write(path, data))


def _stage(path: Path, group: FileGroup | None, put) -> Path:
    """Stage into `group`, or (without one) write and move into place at once."""
    if group is not None:
        put(group)
        return path
    with FileGroup(path.parent, f"writing {path.name}") as own:
        put(own)
        own.commit()
    return path


def write_turntable(
    frames: torch.Tensor | np.ndarray,
    path_mp4: str | Path | None,
    path_gif: str | Path | None = None,
    fps: float = 24.0,
    group: FileGroup | None = None,
    gif_max_height: int | None = GIF_MAX_HEIGHT,
) -> list[Path]:
    """Write the frames [N, H, W, 3] (uint8 or float in [0, 1]) as a full-size MP4 and / or
    a GIF scaled down to at most `gif_max_height` rows (None: full size), staged into
    `group` when given."""
    frames = to_uint8_frames(frames)  # check (and convert) once, even when writing nothing
    written = []
    if path_mp4 is not None:
        written.append(write_mp4(frames, path_mp4, fps, group=group))
    if path_gif is not None:
        written.append(write_gif(frames, path_gif, fps, group=group, max_height=gif_max_height))
    return written


def side_by_side(panels: list[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Concatenate panels, each [N, H, W_i, 3], along the width -> [N, H, sum W_i, 3] uint8."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    arrays = [to_uint8_frames(p) for p in panels]
    n, h = arrays[0].shape[:2]
    for a in arrays[1:]:
        if a.shape[:2] != (n, h):
            raise ValueError(f"panels must share frame count and height, got {[a.shape for a in arrays]}")
    return np.concatenate(arrays, axis=2)


def _composite(rgb: np.ndarray, alpha: np.ndarray | None, background: float) -> np.ndarray:
    if alpha is None:
        return rgb
    return rgb * alpha + background * (1.0 - alpha)


def normal_to_rgb(
    normal: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None = None,
    background: float = 1.0,
) -> np.ndarray:
    """Normals [..., 3] in [-1, 1] -> colours [..., 3] in [0, 1] (n * 0.5 + 0.5), composited
    over `background` by alpha [..., 1]. Normals are re-normalised first, so both unit
    normals and opacity-weighted (volume-rendered) normals come out the same."""
    n = _numpy(normal)
    out = np.empty(n.shape, np.float32)
    flat_n, flat_out = n.reshape(-1, 3), out.reshape(-1, 3)
    flat_a = None
    if alpha is not None:
        a = _numpy(alpha)
        flat_a = np.broadcast_to(a, n.shape[:-1] + a.shape[-1:]).reshape(-1, 1)
    # In chunks of pixels, in place: a whole 60-frame 512^2 video through temporaries took seconds.
    chunk = 1 << 20
    for s in range(0, flat_n.shape[0], chunk):
        c, o = flat_n[s : s + chunk].astype(np.float32), flat_out[s : s + chunk]
        length = np.sqrt(np.einsum("ij,ij->i", c, c))[:, None]
        unit = length > 1e-6  # False for zero (uncovered) and NaN normals: those become 0
        np.multiply(c, np.divide(np.float32(0.5), length, out=np.zeros_like(length), where=unit), out=o)
        np.copyto(o, np.float32(0.0), where=~unit)
        o += np.float32(0.5)
        if flat_a is not None:  # composite: (colour - background) * alpha + background
            o -= np.float32(background)
            o *= np.clip(flat_a[s : s + chunk].astype(np.float32), 0.0, 1.0)
            o += np.float32(background)
        np.clip(o, 0.0, 1.0, out=o)
    return out


def depth_to_rgb(
    depth: torch.Tensor | np.ndarray,
    alpha: torch.Tensor | np.ndarray | None = None,
    background: float = 1.0,
    near_far: tuple[float, float] | None = None,
) -> np.ndarray:
    """Depth [..., 1] -> grey [..., 3] in [0, 1]: near is bright, far is dark. The range
    is taken over every covered pixel of the whole array (pass a whole video so it does
    not flicker from frame to frame) unless `near_far` is given."""
    d = _numpy(depth).astype(np.float32)
    a = None if alpha is None else np.clip(_numpy(alpha).astype(np.float32), 0.0, 1.0)
    covered = (a > 0.5) if a is not None else np.ones_like(d, dtype=bool)
    if near_far is None:
        # Volume renders return depth already weighted by opacity; divide it back out.
        vals = (d / np.maximum(a, 1e-6))[covered] if a is not None else d.ravel()
        near_far = (float(np.percentile(vals, 1)), float(np.percentile(vals, 99))) if vals.size else (0.0, 1.0)
    near, far = near_far
    unweighted = d / np.maximum(a, 1e-6) if a is not None else d
    t = np.clip((unweighted - near) / max(far - near, 1e-6), 0.0, 1.0)
    grey = 1.0 - 0.8 * t  # keep the far end visible against a black background
    return np.clip(_composite(np.repeat(grey, 3, axis=-1), a, background), 0.0, 1.0)
