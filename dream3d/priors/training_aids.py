"""What the embedded prior's training loop leans on: EMA weights, the thread tuner,
the periodic sample grid and the progress bar (`train_embedded` holds the loop)."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from safetensors.torch import save_file

from dream3d.cameras import orbit_cameras
from dream3d.priors import vocab
from dream3d.priors.codec import LatentCodec
from dream3d.priors.embedded_model import SAMPLE_GUIDANCE_SCALE, ddim_sample
from dream3d.priors.worlds import DEFAULT_WORLD, World, get_world


def write_checkpoint(out_dir: Path, name: str, weights: dict[str, dict], opt, state: dict,
                     gen: torch.Generator) -> None:
    """Write `out_dir/name/` atomically: fill `name.tmp`, then swap it in (the previous one kept as
    `name.old` until the swap is done). `weights` maps file names to tensors (safetensors); `state`
    (step, config) goes to state.json with the generator's state and the time."""
    tmp, final, old = out_dir / f"{name}.tmp", out_dir / name, out_dir / f"{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file, tensors in weights.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / file)
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "rng": gen.get_state().tolist(), "time": time.time()}))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


class EMA:
    """Exponential moving average of a module's parameters (float32 shadows)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, p in module.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        for k, p in module.named_parameters():
            p.copy_(self.shadow[k].to(p.dtype))


def sample_grid_prompts(world: World | None = None) -> tuple[list[str], torch.Tensor]:
    """Prompts and azimuths of the periodic sample grid: every object of the world (default
    tiny-shapes) in three colours seen from the front, and the fronted objects also from the back."""
    world = world or get_world(DEFAULT_WORLD)
    prompts, az = [], []
    for i, obj in enumerate(world.objects):
        for j in range(3):
            colour = world.colours[(i * 3 + j) % len(world.colours)]
            prompts.append(vocab.caption(colour, obj, "front" if j < 2 else None))
            az.append(0.0 if j < 2 else 30.0 * j)
        if obj in world.fronted_objects:
            prompts.append(vocab.caption(world.colours[i % len(world.colours)], obj, "back"))
            az.append(180.0)
    return prompts, torch.tensor(az)


def write_sample_grid(model, ema: EMA, scheduler, path: Path, seed: int = 0, cols: int = 8,
                      codec: LatentCodec | None = None) -> Path:
    import copy

    import imageio.v3 as iio

    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model)
    ema_model.eval()
    prompts, az = sample_grid_prompts(model.world)
    n, r = len(prompts), model.cfg.resolution
    cams = orbit_cameras(torch.full((n,), 15.0), az, torch.full((n,), 2.9), torch.full((n,), 45.0), r, r)
    imgs = ddim_sample(ema_model, scheduler, prompts, cams.pose_features(), guidance_scale=SAMPLE_GUIDANCE_SCALE,
                       steps=25, generator=torch.Generator().manual_seed(seed),
                       decode=codec.decode if codec is not None else None).cpu()
    rows = math.ceil(n / cols)
    grid = torch.ones(rows * cols, r, r, 3)
    grid[:n] = imgs
    grid = grid.reshape(rows, cols, r, r, 3).permute(0, 2, 1, 3, 4).reshape(rows * r, cols * r, 3)
    scale = max(1, 64 // r)  # small priors' tiles drawn at least 64 pixels wide
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, (grid.numpy() * 255).round().astype(np.uint8))
    (path.with_suffix(".txt")).write_text("\n".join(prompts) + "\n")
    return path


class ThreadTuner:
    """Picks 1 or 2 torch threads by measured step time, re-checked periodically,
    because on a shared machine the second thread can make steps slower."""

    def __init__(self, fixed: int, every: int = 300, trial: int = 4):
        self.fixed, self.every, self.trial = fixed, every, trial
        # Spinning OpenMP threads on a busy machine make 2 threads the slow choice; start safe.
        self.current = fixed or (2 if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else 1)
        self.times: dict[int, list[float]] = {1: [], 2: []}
        torch.set_num_threads(self.current)

    def record(self, step: int, seconds: float) -> None:
        if self.fixed:
            return
        self.times[self.current].append(seconds)
        phase = step % self.every
        if phase == self.every - self.trial - 1 or phase == self.every - 1:
            # End of a measuring window: switch to the other setting, or settle on the faster one.
            if phase == self.every - 1:
                med = {k: float(np.median(v[-self.trial:])) if v else math.inf for k, v in self.times.items()}
                self.current = min(med, key=med.get)
            else:
                self.current = 3 - self.current
            torch.set_num_threads(self.current)


def progress_bar(start: int, total: int):
    """A started rich progress bar with the running loss and ETA (interactive terminals only)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("training prior"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    bar.add_task("train", total=total, completed=start, loss=float("nan"))
    bar.start()
    return bar
