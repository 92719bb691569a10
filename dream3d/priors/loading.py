"""Find and open a diffusion prior by name: the embedded prior, a local folder or
a Hugging Face id already in the local cache.

This module resolves the folder once (`hub.resolve_model_folder`: nothing is
downloaded unless the caller passes `allow_download=True`), detects its family
and hands the folder to that backend; the backends never import this module.
Every problem a user can cause becomes a one-line `UserError`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from dream3d.errors import UserError
from dream3d.priors.base import DiffusionPrior
from dream3d.priors.hub import first_line, resolve_model_folder
from dream3d.priors.paths import EMBEDDED_NAMES, embedded_prior_dir


def load_prior(model: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               **opts) -> DiffusionPrior:
    """Open a prior. `model` is an embedded prior's name ("tiny-shapes", "toy-world", "embedded" for the
    default), a local folder, or a
    Hugging Face id (looked up in the local cache, `cache_dir` or the hub's own, and
    downloaded only with `allow_download=True`). Other options (`resolution`) go to the backend."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model in EMBEDDED_NAMES:
        folder = embedded_prior_dir(model)
        if not folder.is_dir():
            raise UserError(f"the embedded prior {model} is missing: expected the folder {folder} (point "
                            "DREAM3D_PRIOR_DIR at a copy of the default one, or reinstall dream3d from its source "
                            "repository)")
        return _open_embedded(folder, device)
    folder = resolve_model_folder(model, opts.pop("allow_download", False), opts.pop("cache_dir", None))
    family = detect_family(folder)
    if family == "sd":
        from dream3d.priors.stable_diffusion import StableDiffusionPrior

        return StableDiffusionPrior(folder, device=device, dtype=dtype, **opts)
    if family == "if":
        from dream3d.priors.deepfloyd import DeepFloydPrior

        return DeepFloydPrior(folder, device=device, dtype=dtype, **opts)
    if family == "zero123":
        from dream3d.priors.zero123 import Zero123Prior

        return Zero123Prior(folder, device=device, dtype=dtype, **opts)
    return _open_embedded(folder, device)


def _open_embedded(folder: Path, device: torch.device) -> DiffusionPrior:
    from dream3d.priors.embedded import EmbeddedPrior  # written separately; imported only when needed

    try:
        return EmbeddedPrior(folder, device)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable folder
        raise UserError(f"{folder} is neither a diffusers model folder (no model_index.json or unet/config.json) "
                        f"nor a readable embedded prior: {first_line(e)}") from e


def detect_family(folder: Path) -> str | None:
    """"embedded" for a dream3d prior folder (prior.json), "sd", "if" or "zero123" (Zero-1-to-3,
    image-conditioned) for a diffusers folder, None for a folder without diffusers files."""
    if (folder / "prior.json").is_file():
        return "embedded"
    index = folder / "model_index.json"
    if index.is_file():
        try:
            name = str(json.loads(index.read_text()).get("_class_name", ""))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise UserError(f"{index} is corrupt ({first_line(e)}); re-download the model or pass another folder") from e
        if name.startswith("IF"):
            return "if"
        if name.startswith("Zero1to3") or "zero123" in name.lower():  # the community pipeline's ports
            return "zero123"
        if name.startswith("StableDiffusion") and not name.startswith(("StableDiffusionXL", "StableDiffusion3")):
            return "sd"
        raise UserError(f"{folder} holds a {name or 'unnamed'} pipeline; dream3d reads Stable Diffusion 1.x/2.x, "
                        "DeepFloyd IF stage I and Zero-1-to-3 folders")
    if (folder / "cc_projection").is_dir():
        return "zero123"  # no model_index.json, but only Zero-1-to-3 folders carry a camera projection
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file():
        try:
            cfg = json.loads(unet_config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{unet_config} is corrupt ({first_line(e)}); re-download the model") from e
        return "if" if cfg.get("in_channels") == 3 and cfg.get("out_channels") == 6 else "sd"
    return None
