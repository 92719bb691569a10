"""Variational score distillation (ProlificDreamer, arXiv 2305.16213).

    g = w(t) (eps_pretrained_cfg(x_t; y_view, t) - eps_phi(x_t; y, c, t))

eps_phi is the prior's own UNet with LoRA adapters (peft) and a camera MLP whose
output is added to the UNet's time embedding (what diffusers' class embedding
does), so no copy of the UNet is made: adapters are enabled only inside
`VSDGuidance.lora(...)` and disabled otherwise, which restores the pretrained
prediction exactly for every other user of the shared prior. Each call also
trains eps_phi on the detached render with the plain diffusion loss at a fresh t,
the camera zeroed with probability `camera_dropout`, so "LoRA-CFG"
eps_phi(c=0) + s_lora (eps_phi(c) - eps_phi(c=0)) is available (s_lora = 1: eps_phi(c)).
The returned loss is the VSD term plus the LoRA loss; the trainer's Adam steps both
(the LoRA group is 'lora' in `train.lr`, about 1e-4).

CFG convention: eps_u + s (eps_c - eps_u) (diffusers; ProlificDreamer's 7.5).
The LoRA regresses eps, whatever the prior's prediction type (for a v-prediction
UNet that is the v loss weighted by alpha_t^2).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.guidance import common
from dream3d.guidance.base import Guidance
from dream3d.guidance.prompt import PromptProcessor
from dream3d.guidance.timesteps import TimestepConfig, build_timesteps
from dream3d.noise import NoiseConfig, build_noise_source
from dream3d.noise.base import randn
from dream3d.priors.base import DiffusionPrior
from dream3d.types import Cameras, GuidanceOutput, RenderOutput

ADAPTER = "dream3d_vsd"
POSE_DIM = 16  # length of Cameras.pose_features()


@dataclass
class VSDConfig:
    guidance_scale: float = 7.5
    """CFG scale of the pretrained term, eps_u + s (eps_c - eps_u)."""
    lora_guidance_scale: float = 1.0
    """s_lora in eps_phi(c=0) + s_lora (eps_phi(c) - eps_phi(c=0)); 1 uses the camera-conditioned eps_phi."""
    lora_rank: int = 4
    """Rank of the LoRA adapters."""
    lora_alpha: float = 4.0
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """UNet module names that get adapters (the attention projections)."""
    camera_dropout: float = 0.1
    """Probability of zeroing the camera when training the LoRA (enables LoRA-CFG)."""
    lora_t_min: float = 0.0
    """Lowest timestep of LoRA training, as a fraction of T."""
    lora_t_max: float = 1.0
    """Highest timestep of LoRA training, as a fraction of T."""
    weighting: common.Weighting = "sds"
    """w(t): 'sds' sigma^2, 'uniform', 'fantasia' alpha sigma^2, 'sigma_over_alpha'."""
    grad_clip: float | None = None
    """Clamp every element of g to [-grad_clip, grad_clip] (None: no clamp)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """The t schedule of the VSD term."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """The noise source of the VSD term."""
    lr: dict[str, float] = field(default_factory=lambda: {"lora": 1e-4})
    """Adam learning rate of the LoRA and camera embedding ('lora')."""


def denoiser_unet(prior: DiffusionPrior):
    """The prior's diffusers UNet (`prior.unet`, or `prior.model.unet` for the embedded prior), or None."""
    unet = getattr(prior, "unet", None)
    if unet is None:
        unet = getattr(getattr(prior, "model", None), "unet", None)
    return unet


class CameraEmbedding(nn.Module):
    """Pose features [N, 16] -> a vector added to the UNet's time embedding [N, D]. The last layer
    starts at zero, so a fresh eps_phi equals the pretrained UNet."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(POSE_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, pose: Tensor) -> Tensor:
        return self.net(pose)


class VSDState(nn.Module):
    """What VSD trains besides the 3D model, for checkpoints: the camera MLP and the LoRA
    weights (the very parameters inside the prior's UNet, registered here under flat names)."""

    def __init__(self, camera: CameraEmbedding, lora: dict[str, nn.Parameter]):
        super().__init__()
        self.camera = camera
        self.lora = nn.ParameterDict({name.replace(".", "__"): p for name, p in lora.items()})


class VSDGuidance(Guidance):
    def __init__(self, prior: DiffusionPrior, cfg: VSDConfig | None = None, timesteps=None, noise_source=None):
        self.prior, self.cfg = prior, cfg or VSDConfig()
        self.unet = denoiser_unet(prior)
        if self.unet is None or not hasattr(self.unet, "add_adapter") or not hasattr(self.unet, "time_embedding"):
            raise UserError(f"vsd needs a prior with a diffusers UNet it can add LoRA adapters and a camera "
                            f"embedding to (Stable Diffusion, DeepFloyd IF or the embedded prior); "
                            f"'{prior.name}' has none")
        self.timesteps = timesteps or build_timesteps(self.cfg.timesteps, prior.num_train_timesteps)
        self.noise_source = noise_source or build_noise_source(self.cfg.noise)
        self.alphas_cumprod = prior.alphas_cumprod
        lora = self._add_lora()
        dim = self.unet.time_embedding.linear_2.out_features
        self.camera = CameraEmbedding(dim).to(prior.device)
        self.state = VSDState(self.camera, lora)
        self._pose: Tensor | None = None  # camera features fed to the time-embedding hook while active
        self._hook = self.unet.time_embedding.register_forward_hook(self._add_camera)

    def _add_lora(self) -> dict[str, nn.Parameter]:
        """Add fresh adapters (float32 so Adam works under fp16 weights), returned by name and
        left disabled. Each stage's VSD has its own: `close` removes them as the stage ends."""
        if ADAPTER in (getattr(self.unet, "peft_config", None) or {}):
            raise RuntimeError("the prior's UNet still holds another VSD stage's adapters (its guidance was not closed)")
        try:
            from peft import LoraConfig
        except ImportError:
            raise UserError("vsd needs the 'peft' package (pip install peft)") from None
        c = self.cfg
        try:
            self.unet.add_adapter(LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, init_lora_weights=True,
                                             target_modules=list(c.lora_targets)), adapter_name=ADAPTER)
        except ValueError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"vsd could not add LoRA adapters to {self.prior.name}'s UNet: {first}") from None
        lora = {n: p for n, p in self.unet.named_parameters() if f".{ADAPTER}." in n}
        self.unet.disable_adapters()
        for p in lora.values():
            p.data = p.data.float()
            p.requires_grad_(True)
        return lora

    def _add_camera(self, module, inputs, output):
        if self._pose is None:
            return output
        return output + self.camera(self._pose.to(output.device, torch.float32)).to(output.dtype)

    @contextmanager
    def lora(self, pose: Tensor):
        """Inside: the prior's UNet is eps_phi, conditioned on pose features pose [N, 16] (zeros = no camera)."""
        self._pose = pose
        self.unet.set_adapter(ADAPTER)
        self.unet.enable_adapters()
        try:
            yield
        finally:
            self.unet.disable_adapters()
            self._pose = None
            # peft's disable also clears requires_grad, which would drop the gradients of a graph
            # built inside this block; unused while disabled, so they simply stay trainable
            self.state.lora.requires_grad_(True)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"lora": list(self.state.parameters())}

    def close(self) -> None:
        """Take the camera hook and the adapters off the shared UNet: the pretrained prior is left as it was."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if ADAPTER in (getattr(self.unet, "peft_config", None) or {}):
            self.unet.delete_adapters(ADAPTER)

    def modules(self) -> dict[str, nn.Module]:
        return {"vsd": self.state, "vsd_noise": self.noise_source}

    def lora_eps(self, x_t: Tensor, t: Tensor, embeds: Tensor, pose: Tensor) -> Tensor:
        """eps_phi [B, C, h, w] for pose features pose [B, 16] (a camera-aware prior gets them too)."""
        with self.lora(pose):
            return self.prior.predict_eps(x_t, t, embeds, camera=pose if self.prior.takes_camera else None).float()

    def lora_loss(self, x: Tensor, t: Tensor, noise: Tensor, embeds: Tensor, pose: Tensor) -> Tensor:
        """Diffusion loss of eps_phi on x [B, C, h, w] (detached) at timesteps t [B] with noise [B, C, h, w]."""
        a_t = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = common.add_noise(x.detach(), noise, a_t)
        return F.mse_loss(self.lora_eps(x_t, t, embeds, pose), noise)

    def __call__(self, out: RenderOutput, cams: Cameras, prompt: PromptProcessor, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        c, prior = self.cfg, self.prior
        x = prior.encode(out.rgb).float()  # [B, C, h, w], differentiable
        B, device = x.shape[0], x.device
        t = self.timesteps.sample(B, progress, generator).to(device)
        eps = common.draw_noise(noise, self.noise_source, out, cams, x, generator)
        pose = cams.pose_features().to(device)
        plain = prompt.cond_plain.unsqueeze(0).expand(B, *prompt.cond_plain.shape)
        with torch.no_grad():
            a_t = self.alphas_cumprod[t].view(B, 1, 1, 1)
            x_t = common.add_noise(x, eps, a_t)
            cond, uncond = prompt(cams)
            eps_pretrained = common.cfg_eps(prior, x_t, t, cond, uncond, common.camera_features(prior, cams, device),
                                            c.guidance_scale)
            both = self.lora_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([plain, plain]),
                                 torch.cat([pose, torch.zeros_like(pose)]))
            eps_cam, eps_nocam = both.chunk(2)
            eps_phi = eps_nocam + c.lora_guidance_scale * (eps_cam - eps_nocam)
            g = common.clip(common.weight(c.weighting, a_t) * (eps_pretrained - eps_phi), c.grad_clip)
        loss = common.distillation_loss(x, g)

        # train eps_phi on this render: fresh t and noise, camera dropped with p = camera_dropout
        T = prior.num_train_timesteps
        lo, hi = round(c.lora_t_min * (T - 1)), round(c.lora_t_max * (T - 1))
        t_lora = torch.randint(lo, max(lo, hi) + 1, (B,), generator=generator).to(device)
        noise_lora = randn(tuple(x.shape), generator, device)
        keep = torch.rand(B, generator=generator).to(device) >= c.camera_dropout
        loss_lora = self.lora_loss(x, t_lora, noise_lora, plain, pose * keep[:, None])
        return GuidanceOutput(loss + loss_lora, {"grad_norm": float(g.norm()), "t": float(t.float().mean()),
                                                 "lora_loss": float(loss_lora.detach())})

