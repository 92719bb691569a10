"""Warm start of a prior training run from an exported prior folder (`dream3d prior train --init-from`).

A run folder lives in a cache that need not outlive the machine; an exported prior folder (the EMA
weights, float16 when kept in the repository) does. A new run started from it keeps what was learned:
the weights and their EMA start from the folder's, a latent run takes the folder's VAE, and the step
count goes on from the folder's so the model card counts every step the weights have seen. The
optimizer starts fresh (its moments are not exported), so the learning rate warms up again.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from dream3d.errors import UserError
from dream3d.priors.embedded_model import EmbeddedDiffusionModel, EmbeddedModelConfig


def _model_diff(saved: EmbeddedModelConfig, wanted: EmbeddedModelConfig) -> dict:
    a, b = json.loads(json.dumps(asdict(saved))), json.loads(json.dumps(asdict(wanted)))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def warm_start(model: EmbeddedDiffusionModel, folder: Path, world: str, out_dir: Path) -> int:
    """Load `folder`'s weights into `model` (same architecture and world, else a one-line UserError);
    copy its VAE to `out_dir/vae/` for a latent model when the run has none. Returns the folder's
    training steps, where the new run's step count starts."""
    from dream3d.priors.prior_folder import load_prior_components

    folder = Path(folder)
    if not (folder / "prior.json").is_file():
        raise UserError(f"--init-from {folder}: not a prior folder (it has no prior.json)")
    try:
        loaded, _, meta, _ = load_prior_components(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--init-from {folder}: cannot load it ({type(e).__name__}: {e})") from None
    if loaded.world.name != world:
        raise UserError(f"--init-from {folder}: it was trained on the {loaded.world.name} world, not {world}")
    diff = _model_diff(loaded.cfg, model.cfg)
    if diff:
        raise UserError(f"--init-from {folder}: its model differs from the one to train (saved, wanted): {diff}")
    model.load_state_dict(loaded.state_dict())  # float16 folders are float32 once loaded
    if model.cfg.latent_channels and not (out_dir / "vae" / "config.json").exists():
        (out_dir / "vae").mkdir(parents=True, exist_ok=True)
        for f in (folder / "vae").iterdir():
            shutil.copy2(f, out_dir / "vae" / f.name)
    return int(meta.get("train_steps", 0))
