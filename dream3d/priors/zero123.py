"""Zero-1-to-3 / Stable Zero123 as a latent prior conditioned on a reference image and a
relative camera (the diffusers layout of the public ports, `Zero1to3StableDiffusionPipeline`).

The folder holds `unet/` (a UNet2DConditionModel whose input is the noisy latent
concatenated with the reference image's latent, so in_channels = 2 x latent channels),
`vae/`, `image_encoder/` (CLIPVisionModelWithProjection), `feature_extractor/`
(CLIPImageProcessor: only its resize and normalisation are read), `cc_projection/` (a
Linear from CLIP image embedding ++ 4 camera numbers to the UNet's cross-attention width)
and `scheduler/`. Everything loads offline and frozen.

The UNet cross-attends to one token, cc_projection([clip(ref), pose]); which four numbers
`pose` holds is the guidance's business (`guidance.zero123.relative_pose`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.priors.base import DiffusionPrior
from dream3d.priors.hub import (check_parts, default_dtype, eps_from_model_output, first_line, freeze, load_part,
                                resize_square, weights_variant)

POSE_DIM = 4  # [d_polar, sin d_azimuth, cos d_azimuth, d_radius or reference polar]


class Zero123Prior(DiffusionPrior):
    """Latent prior. `x` is the VAE posterior mean times `scaling_factor`, as Stable Diffusion's;
    the reference image's latent that the UNet reads beside x is the *unscaled* posterior mean,
    as Zero-1-to-3 was trained (`encode_first_stage(img).mode()` without the scale factor)."""

    name = "zero123"
    reads_text = False

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                 resolution: int = 256):
        """`folder`: a local folder in the Zero-1-to-3 diffusers layout, already resolved.
        `resolution`: the side renders and the reference are resized to (Zero-1-to-3: 256)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection

        self.folder = Path(folder)
        self.device = torch.device(device)
        self.dtype = default_dtype(self.device, dtype)
        self.resolution = resolution
        check_parts(self.folder, "zero123")
        fp16 = self.dtype == torch.float16
        self.unet = load_part(UNet2DConditionModel, self.folder, "unet", torch_dtype=self.dtype,
                              variant=weights_variant(self.folder / "unet", fp16))
        self.vae = load_part(AutoencoderKL, self.folder, "vae", torch_dtype=self.dtype,
                             variant=weights_variant(self.folder / "vae", fp16))
        # transformers spells the argument `dtype`, diffusers `torch_dtype`
        self.image_encoder = load_part(CLIPVisionModelWithProjection, self.folder, "image_encoder", dtype=self.dtype,
                                       variant=weights_variant(self.folder / "image_encoder", fp16))
        self.cc_projection = _load_cc_projection(self.folder / "cc_projection", self.dtype)
        processor = _read_processor(self.folder / "feature_extractor" / "preprocessor_config.json")
        self.scheduler = load_part(DDPMScheduler, self.folder, "scheduler")
        for m in (self.unet, self.vae, self.image_encoder, self.cc_projection):
            m.to(self.device)
        freeze(self.unet, self.vae, self.image_encoder, self.cc_projection)
        self._check_shapes()
        self.clip_size = processor["side"]
        self.clip_mean = torch.tensor(processor["mean"], device=self.device).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(processor["std"], device=self.device).view(1, 3, 1, 1)
        self.prediction_type = self.scheduler.config.prediction_type
        self.scaling_factor = float(self.vae.config.scaling_factor)

    def _check_shapes(self) -> None:
        """The parts must fit together; a mismatch is a folder assembled from different models."""
        latent = int(self.vae.config.latent_channels)
        unet, width = self.unet.config, self.cc_projection.out_features
        expected_in = int(self.image_encoder.config.projection_dim) + POSE_DIM
        problems = []
        if unet.in_channels != 2 * latent or unet.out_channels != latent:
            problems.append(f"unet/ takes {unet.in_channels} channels and gives {unet.out_channels}, but the "
                            f"noisy and reference latents make {2 * latent} in and {latent} out")
        if self.cc_projection.in_features != expected_in:
            problems.append(f"cc_projection/ reads {self.cc_projection.in_features} numbers, not the image "
                            f"embedding's {expected_in - POSE_DIM} + {POSE_DIM} camera numbers")
        if width != unet.cross_attention_dim:
            problems.append(f"cc_projection/ gives {width} numbers, the UNet cross-attends to {unet.cross_attention_dim}")
        if problems:
            raise UserError(f"{self.folder} is not a consistent Zero-1-to-3 folder: {'; '.join(problems)}")

    # ------------------------------------------------------------ the prior's space

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> latents [B, 4, res/f, res/f] float32 (differentiable)."""
        x = resize_square(images.permute(0, 3, 1, 2), self.resolution) * 2.0 - 1.0
        return (self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mean * self.scaling_factor).float()

    def decode(self, x: Tensor) -> Tensor:
        """latents [B, 4, h, w] -> images [B, f h, f w, 3] in [0, 1]."""
        images = self.vae.decode(x.to(self.device, self.dtype) / self.scaling_factor).sample.float()
        return ((images + 1.0) * 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    def embed(self, prompts: list[str]) -> Tensor:
        """Zeros [N, 1, D]: the prior reads no text. A run still embeds its prompt (which then only names
        the run); every rule that would read these is refused by `Guidance.check_prior`."""
        return torch.zeros(len(prompts), 1, self.cc_projection.out_features, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------ reference image and camera

    @torch.no_grad()
    def embed_reference(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """rgb [1, H, W, 3] in [0, 1] (object on white, as Zero-1-to-3 was trained) ->
        (CLIP image embedding [1, 1, E], unscaled VAE latent mean [1, 4, res/f, res/f]), float32."""
        pixels = rgb.permute(0, 3, 1, 2).to(self.device, torch.float32)
        clip_in = (resize_square(pixels, self.clip_size) - self.clip_mean) / self.clip_std
        clip = self.image_encoder(pixel_values=clip_in.to(self.dtype)).image_embeds.float()
        x = resize_square(pixels, self.resolution) * 2.0 - 1.0
        latent = self.vae.encode(x.to(self.dtype)).latent_dist.mean.float()
        return clip.unsqueeze(1), latent

    def condition(self, clip: Tensor, pose: Tensor) -> Tensor:
        """The UNet's cross-attention token [B, 1, D] = cc_projection([clip, pose]); clip [1 or B, 1, E], pose [B, 4]."""
        clip = clip.to(self.device, torch.float32).expand(pose.shape[0], 1, clip.shape[-1])
        joined = torch.cat([clip, pose.to(self.device, torch.float32)[:, None, :]], dim=-1)
        return self.cc_projection(joined.to(self.dtype)).float()

    def predict_eps(self, x_t: Tensor, t: Tensor, embeds: Tensor, camera: Tensor | None = None,
                    image_latents: Tensor | None = None) -> Tensor:
        """x_t [B, 4, h, w], t [B] long, embeds [B, 1, D] (from `condition`, zeros for CFG's unconditional
        branch), image_latents [B, 4, h, w] (from `embed_reference`, zeros unconditional) -> eps float32."""
        if image_latents is None:
            raise UserError("the Zero-1-to-3 prior predicts noise only with a reference image; "
                            "use --guidance zero123 with --image")
        t = t.to(self.device)
        z = torch.cat([x_t.to(self.device, self.dtype), image_latents.to(self.device, self.dtype)], dim=1)
        out = self.unet(z, t, encoder_hidden_states=embeds.to(self.device, self.dtype)).sample
        return eps_from_model_output(out.float(), x_t.float(), self.alphas_cumprod[t].view(-1, 1, 1, 1),
                                     self.prediction_type)


def _read_processor(path: Path) -> dict:
    """What CLIP's image processor does to a square image, from its config: the side it
    resizes to (crop size, else resize size; 224 for ViT-L/14) and the normalisation."""
    try:
        cfg = json.loads(path.read_text())
        size = cfg.get("crop_size") or cfg.get("size") or 224
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        out = {"side": int(size), "mean": [float(v) for v in cfg["image_mean"]],
               "std": [float(v) for v in cfg["image_std"]]}
        if len(out["mean"]) != 3 or len(out["std"]) != 3:
            raise ValueError("image_mean and image_std need three values")
    except Exception as e:  # noqa: BLE001 - corrupt json or missing keys
        raise UserError(f"{path} is corrupt or incomplete ({first_line(e)}); re-download the folder") from e
    return out


def _load_cc_projection(part: Path, dtype: torch.dtype) -> nn.Linear:
    """The camera projection as an nn.Linear: `config.json` (`in_channel`, `out_channel`, as the
    community pipeline's CCProjection saves it) and its weights (`projection.weight` / `.bias`,
    or bare `weight` / `bias`) in safetensors or a torch .bin."""
    try:
        cfg = json.loads((part / "config.json").read_text())
        n_in, n_out = int(cfg["in_channel"]), int(cfg["out_channel"])
        state = _read_weights(part)
        state = {k.removeprefix("projection."): v for k, v in state.items()}
        linear = nn.Linear(n_in, n_out, bias="bias" in state)
        linear.load_state_dict(state)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt json, missing keys, wrong shapes: an unusable part
        raise UserError(f"could not load cc_projection/ of {part.parent}: {first_line(e)}; the folder may be "
                        "corrupt or incomplete: re-download it or pass another folder") from e
    return linear.to(dtype)


def _read_weights(part: Path) -> dict[str, Tensor]:
    files = sorted(part.glob("*.safetensors")) or sorted(part.glob("*.bin"))
    if not files:
        raise UserError(f"cc_projection/ of {part.parent} has no weights (diffusion_pytorch_model.safetensors); "
                        "re-download the folder")
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(files[0]))
    return torch.load(files[0], map_location="cpu", weights_only=True)
