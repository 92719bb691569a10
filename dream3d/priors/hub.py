"""What the diffusers-backed priors (Stable Diffusion, DeepFloyd IF) share: their
model folders and the arithmetic around their UNets.

A folder comes from a local path or from a snapshot in the Hugging Face cache;
nothing is downloaded unless the caller passes `allow_download=True`. Its parts
load offline, frozen, in one dtype. Every problem a user can cause (missing,
incomplete or corrupt folder) becomes a one-line `UserError` saying what was
looked for, where, and how to get it.

Import order inside `priors/`: `base`, `paths` and this module import no other
backend; `stable_diffusion` and `deepfloyd` import only these; `loading` resolves a
folder, detects its family and dispatches to a backend (a backend never imports
`loading`, as a diffusers pipeline never imports its loader).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dream3d.errors import UserError
from dream3d.priors.codec import resize_square  # noqa: F401 - the backends' resize, shared with the codecs

# Subfolders (diffusers layout) each family needs, with the file that must be in each.
REQUIRED_PARTS = {
    "sd": {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
           "tokenizer": None, "scheduler": "scheduler_config.json"},
    "if": {"unet": "config.json", "text_encoder": "config.json",
           "tokenizer": None, "scheduler": "scheduler_config.json"},
    "zero123": {"unet": "config.json", "vae": "config.json", "image_encoder": "config.json",
                "feature_extractor": "preprocessor_config.json", "cc_projection": "config.json",
                "scheduler": "scheduler_config.json"},
}
FAMILY_NAMES = {"sd": "Stable Diffusion", "if": "DeepFloyd IF", "zero123": "Zero-1-to-3"}

_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# When downloading is allowed, fetch only what the priors read.
_DOWNLOAD_PATTERNS = ["model_index.json", "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*",
                      "image_encoder/*", "feature_extractor/*", "cc_projection/*"]
_SKIP_PATTERNS = ["*.msgpack", "*.onnx", "*.onnx_data", "*.h5", "*.ckpt", "*.pb"]


# ---------------------------------------------------------------- finding a folder

def resolve_model_folder(model: str, allow_download: bool = False, cache_dir: str | Path | None = None) -> Path:
    """A local folder for `model`: the folder itself, or its snapshot in the Hugging Face cache
    (`cache_dir`, default the hub's own), downloaded only when `allow_download`."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{path} is a file; pass the model's folder (diffusers layout with model_index.json)")
    if model.startswith((".", "/", "~")) or "\\" in model or not _HF_ID.fullmatch(model):
        raise UserError(f"model folder {path} does not exist; pass a folder in diffusers layout "
                        "(unet/, text_encoder/, tokenizer/, scheduler/ ...), a Hugging Face id, or 'tiny-shapes'")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    try:
        return Path(snapshot_download(model, cache_dir=cache_dir, local_files_only=not allow_download,
                                      allow_patterns=_DOWNLOAD_PATTERNS, ignore_patterns=_SKIP_PATTERNS))
    except LocalEntryNotFoundError as e:
        raise UserError(f"model {model!r} is neither a local folder nor in the Hugging Face cache ({where}); "
                        f"run `hf download {model}` (or `huggingface-cli download {model}`) on a connected machine "
                        "and copy the cache, or pass a local folder") from e
    except Exception as e:  # noqa: BLE001 - network / auth problems while downloading
        raise UserError(f"could not download {model!r} into {where}: {first_line(e)}") from e


def check_parts(folder: Path, family: str) -> None:
    """Raise UserError naming every missing part of a diffusers folder."""
    missing = []
    for sub, required_file in REQUIRED_PARTS[family].items():
        part = folder / sub
        ok = (part / required_file).is_file() if required_file else part.is_dir() and any(part.iterdir())
        if not ok:
            missing.append(f"{sub}/{required_file or ''}")
    if missing:
        raise UserError(f"{folder} is not a complete {FAMILY_NAMES[family]} folder: missing {', '.join(missing)}; "
                        "re-download it (`hf download ID`) or pass a complete diffusers folder")


# ---------------------------------------------------------------- loading its parts

def default_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores), fp32 elsewhere (CPU fp16 is slow and lossy)."""
    if dtype is not None:
        return dtype
    return torch.float16 if device.type == "cuda" else torch.float32


def weights_variant(part: Path, prefer_fp16: bool = False) -> str | None:
    """Which weight files `from_pretrained` should read in `part`: "fp16" when only the fp16
    variant is there (as some Hub repos ship) or when it is there and fp16 is wanted (half the
    disk reads), else None (the plain files)."""
    names = [p.name for p in part.glob("*") if p.suffix in (".safetensors", ".bin")]
    fp16 = [n for n in names if re.search(r"\.fp16[.-]", n)]
    return "fp16" if fp16 and (prefer_fp16 or len(fp16) == len(names)) else None


def load_part(cls, folder: Path, sub: str, **kwargs):
    """`cls.from_pretrained(folder/sub)` offline, with any failure as a one-line UserError."""
    try:
        return cls.from_pretrained(folder / sub, local_files_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - corrupt or incompatible files; the cause is chained
        if "sentencepiece" in str(e).lower() or "protobuf" in str(e).lower():
            raise UserError(f"reading {folder / sub} needs extra packages: pip install sentencepiece protobuf") from e
        raise UserError(f"could not load {sub}/ of {folder}: {first_line(e)}; the folder may be corrupt or "
                        "incomplete: re-download it (`hf download ID`) or pass another folder") from e


def freeze(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.eval()
        m.requires_grad_(False)


def load_frozen_parts(folder: Path, family: str, device: torch.device, dtype: torch.dtype,
                      models: dict[str, type], text_encoder: type) -> dict[str, Any]:
    """Every part a backend of `family` reads from `folder`, by subfolder name.

    Checks the folder is complete, then loads offline: each diffusers model in `models`
    (subfolder -> class) and the transformers `text_encoder` class in `dtype` (the fp16 weight
    files when fp16 is wanted or they are all there is), moved to `device` and frozen; the
    tokenizer; and the scheduler's config as a DDPM noise table."""
    from diffusers import DDPMScheduler
    from transformers import AutoTokenizer

    check_parts(folder, family)
    fp16 = dtype == torch.float16
    parts: dict[str, Any] = {sub: load_part(cls, folder, sub, torch_dtype=dtype,
                                            variant=weights_variant(folder / sub, fp16))
                             for sub, cls in models.items()}
    # transformers spells the argument `dtype`, diffusers `torch_dtype`
    parts["text_encoder"] = load_part(text_encoder, folder, "text_encoder", dtype=dtype,
                                      variant=weights_variant(folder / "text_encoder", fp16))
    for m in parts.values():
        m.to(device)
    freeze(*parts.values())
    parts["tokenizer"] = load_part(AutoTokenizer, folder, "tokenizer")
    # DDPM's training-time noise table; loads the config of whatever sampler the folder ships.
    parts["scheduler"] = load_part(DDPMScheduler, folder, "scheduler")
    return parts


# ---------------------------------------------------------------- around the UNet

def eps_from_model_output(out: Tensor, x_t: Tensor, alpha_bar_t: Tensor, prediction_type: str) -> Tensor:
    """Noise prediction from a UNet output of any diffusers `prediction_type`.

    out, x_t: [B, C, h, w]; alpha_bar_t: [B, 1, 1, 1]. With x_t = alpha x0 + sigma eps:
    v = alpha eps - sigma x0  =>  eps = alpha v + sigma x_t;  x0  =>  eps = (x_t - alpha x0) / sigma.
    """
    if prediction_type == "epsilon":
        return out
    alpha, sigma = alpha_bar_t.sqrt(), (1.0 - alpha_bar_t).sqrt()
    if prediction_type == "v_prediction":
        return alpha * out + sigma * x_t
    if prediction_type == "sample":
        return (x_t - alpha * out) / sigma
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, at most 240 characters (for one-line errors)."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 240 else line[:237] + "..."
