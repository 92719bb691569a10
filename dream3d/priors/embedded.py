"""The embedded default prior: a tiny camera-aware diffusion model that ships
with dream3d (`assets/priors/`) and runs offline on a CPU.

It knows the vocabulary of its world (`dream3d.priors.worlds`, named in its
prior.json; tiny-shapes: ten colours, twelve objects) and four view suffixes.
Its space is pixels in [-1, 1] at the prior's resolution (tiny-shapes, 32x32:
`encode` is an antialiased resize) or the latents of its own small VAE (`encode`
is the VAE's, through the same `LatentCodec` as Stable Diffusion). A prior trained on groups
of views (`joint_views` in its prior.json) also denoises N views of one object
jointly: `predict_eps(..., n_views=N)`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dream3d.errors import UserError
from dream3d.priors import vocab
from dream3d.priors.base import DiffusionPrior
from dream3d.priors.embedded_model import SAMPLE_GUIDANCE_SCALE, SAMPLE_VIEW_GUIDANCE_SCALE, ddim_sample
from dream3d.priors.prior_folder import load_prior_components
from dream3d.priors.paths import embedded_prior_dir
from dream3d.types import Cameras


class EmbeddedPrior(DiffusionPrior):
    name = "embedded"
    takes_camera = True

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        path = Path(path) if path is not None else embedded_prior_dir()
        if not (path / "prior.json").exists():
            raise UserError(
                f"no embedded prior at {path} (expected prior.json, unet/, text_encoder/, tokenizer/, scheduler/); "
                "train one with `dream3d prior train` or pass --model with a diffusers checkpoint"
            )
        self.path = path
        self.device, self.dtype = torch.device(device), dtype
        model, scheduler, meta, codec = load_prior_components(path, dtype=dtype)
        self.model = model.to(self.device).eval()
        if hasattr(codec, "vae"):
            codec.vae.to(self.device)
        self.codec = codec
        if self.device.type == "cpu":
            self.model.unet.to(memory_format=torch.channels_last)
        self.model.requires_grad_(False)
        self.scheduler = scheduler
        self.meta = meta
        self.resolution = int(meta["resolution"])
        self.world = model.world  # the words its token ids belong to (tiny-shapes for older folders)
        self.joint_views = bool(model.cfg.joint_views)  # False for folders saved before the flag existed
        self.name = f"embedded:{path.name}"
        self._embed_cache: dict[str, Tensor] = {}

    @property
    def unet(self):
        """The diffusers UNet (camera enters as `class_labels` = pose features [B, 16])."""
        return self.model.unet

    # ------------------------------------------------------------------ DiffusionPrior

    def encode(self, images: Tensor) -> Tensor:
        """images [B, H, W, 3] in [0, 1] -> x [B, C, h, w] in the prior's space (differentiable): pixels in
        [-1, 1] resized to its resolution, or the latents of its VAE (the path Stable Diffusion takes)."""
        return self.codec.encode(images.to(self.device, self.dtype))

    def decode(self, x: Tensor) -> Tensor:
        """x [B, C, h, w] -> images [B, r, r, 3] in [0, 1]."""
        return self.codec.decode(x)

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> Tensor:
        """[N, L, D] text embeddings, cached per prompt; "" gives the unconditional one."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embed_cache]
        if missing:
            out = self.model.embed(missing).to(self.dtype)
            for p, e in zip(missing, out):
                self._embed_cache[p] = e
        return torch.stack([self._embed_cache[p] for p in prompts])

    def predict_eps(self, x_t: Tensor, t: Tensor, embeds: Tensor, camera: Tensor | None = None,
                    n_views: int = 1) -> Tensor:
        """eps [B, C, h, w] for x_t [B, C, h, w], t [B], embeds [B, L, D], camera pose features [B, 16] or None.
        `n_views` N > 1 (joint-view priors): the batch is B / N groups of N views, group-major, each
        denoised jointly; every view keeps its own camera and embedding, and the group shares one t."""
        B = x_t.shape[0]
        if n_views != 1 and not self.joint_views:
            raise ValueError(f"the prior {self.name} denoises one view at a time (it has no joint views)")
        if B % n_views:
            raise ValueError(f"a batch of {B} is not whole groups of {n_views} views")
        t = t.to(self.device).long().expand(B) if t.numel() == 1 else t.to(self.device).long()
        camera = None if camera is None else camera.to(self.device, self.dtype)
        return self.model(x_t.to(self.device, self.dtype), t, embeds.to(self.dtype), camera, n_views=n_views)

    def check_prompt(self, prompt: str, allow_unknown_words: bool = False) -> list[str]:
        return vocab.check_prompt(prompt, allow_unknown=allow_unknown_words, world=self.world)

    # ------------------------------------------------------------------ sampling

    def sample(self, prompts: list[str], n: int = 1, guidance_scale: float = SAMPLE_GUIDANCE_SCALE, steps: int = 25,
               seed: int = 0, camera: Cameras | Tensor | None = None,
               view_guidance_scale: float = SAMPLE_VIEW_GUIDANCE_SCALE, n_views: int = 1) -> Tensor:
        """DDIM samples: n per prompt, images [len(prompts) * n, r, r, 3] in [0, 1] (prompt-major).
        `camera` is Cameras or pose features [len(prompts) * n, 16]; None samples without a camera.
        `n_views` > 1 (joint-view priors) samples runs of that many consecutive images as one group.
        Guidance: see `ddim_sample` (CFG in the diffusers convention, plus view guidance)."""
        if n_views != 1 and not self.joint_views:
            raise ValueError(f"the prior {self.name} samples one view at a time (it has no joint views)")
        for p in prompts:
            self.check_prompt(p)
        expanded = [p for p in prompts for _ in range(n)]
        pose = camera.pose_features() if isinstance(camera, Cameras) else camera
        if pose is not None and pose.shape[0] != len(expanded):
            raise ValueError(f"camera batch {pose.shape[0]} != {len(expanded)} samples")
        if len(expanded) % n_views:
            raise ValueError(f"{len(expanded)} samples are not whole groups of {n_views} views")
        gen = torch.Generator().manual_seed(seed)
        return ddim_sample(self.model, self.scheduler, expanded, pose, guidance_scale, steps, gen, view_guidance_scale,
                           n_views=n_views, decode=self.codec.decode)
