"""The optimisation loop of one stage: render random views, score them, step."""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dream3d.cameras import sample_orbit, turntable
from dream3d import config as config_mod
from dream3d.atomic import write_bytes_atomic
from dream3d.config import RunConfig, StageConfig
from dream3d.guidance.view_groups import expand_cameras
from dream3d.errors import UserError
from dream3d.representations.base import Representation
from dream3d.run import append_metrics, trim_metrics
from dream3d.runfolder import preview_path, stage_dir
from dream3d.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from dream3d.training.stop import graceful_stop
from dream3d.types import Cameras


@dataclass
class StepLog:
    step: int
    loss: float
    grad_norm: float
    seconds: float
    skipped: bool
    extra: dict


def light_directions(cams: Cameras, gen: torch.Generator) -> torch.Tensor:
    """[B, 3] unit vectors towards a light near the camera, biased upwards."""
    eye = cams.c2w[:, :3, 3].cpu()
    d = eye / eye.norm(dim=-1, keepdim=True) + 0.4 * torch.randn(eye.shape, generator=gen)
    d = d + torch.tensor([0.0, 0.5, 0.0])
    return (d / d.norm(dim=-1, keepdim=True)).to(cams.device)


class Trainer:
    """Runs one stage of a run: its own optimiser, RNG stream, checkpoints and previews."""

    def __init__(self, cfg: RunConfig, stage: StageConfig, stage_index: int, run_dir: Path, rep: Representation,
                 guidance, prompt, device: torch.device, regularizers: list | tuple = ()):
        self.cfg, self.stage, self.run_dir, self.rep, self.guidance, self.prompt = cfg, stage, run_dir, rep, guidance, prompt
        # inputs other than text (a shape guide, a reference photo): `reg(rep, generator, step, progress) -> loss
        # or None`, with `name` and `weight`
        self.regularizers = list(regularizers)
        self.train = stage.train
        self.device = device
        # One RNG stream per stage, so a resumed later stage sees the numbers an uninterrupted run saw.
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + stage_index)
        groups = {**rep.param_groups(), **guidance.param_groups()}
        groups = {name: ps for name, ps in groups.items() if ps}
        rates = config_mod.stage_learning_rates(stage)
        missing = [g for g in groups if g not in rates]
        if missing:
            raise UserError(f"stage '{stage.name}': no learning rate for parameter group "
                            f"'{missing[0]}'; set it with --set train.lr.{missing[0]}=...")
        self.loss_weights = config_mod.stage_loss_weights(stage)
        self.optimizer = torch.optim.Adam(
            [{"params": ps, "lr": rates[name], "name": name} for name, ps in groups.items()],
            betas=(0.9, 0.99), eps=1e-15,
        )
        self.modules = {"representation": rep, **guidance.modules()}
        self.ckpt_dir = stage_dir(run_dir, stage.name)  # refused unless inside the run folder
        self.start_step = 0
        self.nan_streak = 0

    # ------------------------------------------------------------ state
    def resume(self) -> int:
        if not has_checkpoint(self.ckpt_dir):
            raise UserError(f"{self.run_dir} has no checkpoint to resume from")
        state = load_checkpoint(self.ckpt_dir, self.modules, self.optimizer, self.gen)
        self.start_step = int(state["step"])
        return self.start_step

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.ckpt_dir, step, self.modules, self.optimizer, self.gen)

    # ------------------------------------------------------------ one step
    def _shading(self, progress: float) -> str:
        t = self.train
        if progress < t.shading_warmup:
            return "albedo"
        u = float(torch.rand((), generator=self.gen))
        if u < t.textureless_prob:
            return "textureless"
        if u < t.textureless_prob + t.albedo_prob:
            return "albedo"
        return "diffuse"

    def step(self, step: int) -> StepLog:
        t0 = time.perf_counter()
        tc = self.train
        progress = step / tc.steps
        cams = sample_orbit(self.cfg.camera, tc.batch_size, tc.resolution, tc.resolution, self.gen)
        group = self.guidance.view_group  # CSD / GSD score several related views at once
        per_group = 1
        if group is not None:
            cams, per_group = expand_cameras(cams, group), group.size
        cams = cams.to(self.device)
        lo, hi = tc.background
        bg = lo + (hi - lo) * torch.rand(tc.batch_size, 1, generator=self.gen)
        bg = bg.repeat_interleave(per_group, 0).expand(-1, 3).to(self.device)
        light = light_directions(cams, self.gen)
        out = self.rep.render(cams, bg, shading=self._shading(progress), light_dir=light)
        g = self.guidance(out, cams, self.prompt, progress, generator=self.gen)
        loss = g.loss
        for name, term in out.extras.items():
            if name not in self.loss_weights:  # a renamed term must not silently switch a regulariser off
                raise KeyError(f"{type(self.rep).__name__} reports the loss term '{name}', which its config's "
                               f"loss_weights do not name ({', '.join(sorted(self.loss_weights)) or 'none'})")
            weight = self.loss_weights[name]
            if weight > 0:
                loss = loss + weight * term
        logs = dict(g.logs)
        for reg in self.regularizers:
            term = reg(self.rep, self.gen, step, progress) if reg.weight > 0 else None
            if term is not None:
                loss = loss + reg.weight * term
                logs[f"{reg.name}_loss"] = float(term.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for grp in self.optimizer.param_groups for p in grp["params"] if p.grad is not None]
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(p.grad).all()) for p in params)
        if finite:
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            self.optimizer.step()
            self.rep.on_step(step, progress, out, optimizer=self.optimizer)
            self.nan_streak = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.nan_streak += 1
        return StepLog(step, float(loss.detach()) if finite else math.nan, float(logs.pop("grad_norm", math.nan)),
                       time.perf_counter() - t0, not finite, logs)

    # ------------------------------------------------------------ previews
    @torch.no_grad()
    def preview(self, step: int) -> Path:
        res = self.train.resolution
        cams = turntable(self.cfg.camera, 4, res, res).to(self.device)
        bg = torch.full((4, 3), self.cfg.export.background, device=self.device)
        eye = cams.c2w[:, :3, 3]
        light = eye / eye.norm(dim=-1, keepdim=True)
        out = self.rep.render(cams, bg, shading="diffuse", light_dir=light)
        rows = [out.rgb]
        if out.normal is not None:
            rows.append((out.normal * 0.5 + 0.5) * out.alpha + (1 - out.alpha) * bg[:, None, None, :])
        grid = torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0)  # [rows*H, 4*W, 3]
        img = (grid.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        path = preview_path(self.run_dir, self.stage.name, step)
        path.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        write_bytes_atomic({path: buf.getvalue()}, what="writing a preview")  # a full disk: one line, no half PNG
        return path

    # ------------------------------------------------------------ the loop
    def fit(self, on_step: Callable[[StepLog], None] | None = None) -> None:
        """Run to the last step. Ctrl-C (or SIGTERM) finishes the current step, writes a
        checkpoint and raises KeyboardInterrupt, so `--resume` continues exactly."""
        trim_metrics(self.run_dir, self.stage.name, self.start_step)  # steps a killed process logged past its checkpoint
        with graceful_stop() as stop:
            self._fit_loop(self.start_step, stop, on_step)

    def _fit_loop(self, step: int, stop, on_step) -> None:
        tc = self.train
        try:
            while step < tc.steps:
                if stop.requested:
                    raise KeyboardInterrupt
                log = self.step(step)
                step += 1
                append_metrics(self.run_dir, {"stage": self.stage.name, "step": step, "loss": log.loss, "grad_norm": log.grad_norm,
                                              "seconds": round(log.seconds, 4), "skipped": log.skipped, **log.extra})
                if self.nan_streak >= tc.max_nan_steps:
                    raise UserError(f"stopped after {self.nan_streak} non-finite steps in a row at step {step}; "
                                    f"the last good checkpoint is kept in {self.ckpt_dir}")
                if on_step:
                    on_step(log)
                if tc.preview_every and step % tc.preview_every == 0:
                    self.preview(step)
                if tc.ckpt_every and step % tc.ckpt_every == 0 and self.nan_streak == 0:
                    self.checkpoint(step)
        except KeyboardInterrupt:
            if self.nan_streak == 0 and step > self.start_step:
                self.checkpoint(step)
            raise
        self.checkpoint(step)
        self.preview(step)
