"""What the trainer asks of every score-distillation rule, with the defaults most rules keep."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.guidance.view_groups import ViewGroup
from dream3d.types import Cameras, GuidanceOutput, RenderOutput


class Guidance:
    view_group: ViewGroup | None = None
    """Set by rules that score several related views at once (CSD, GSD): the trainer renders groups."""
    takes_reference_image: bool = False
    """True for rules conditioned on the input photo (`generate --image`): such a class defines
    `set_reference(rgb [1, H, W, 3], mask [1, H, W, 1], camera: Cameras)`, called once before its
    stage trains; a run without `--image` is refused before training."""

    @classmethod
    def check_prior(cls, prior, cfg) -> None:
        """Raise UserError when the rule cannot work with `prior` (options `cfg`); a run asks this of
        every stage's rule before any stage trains. Default: any prior that reads text (a prior
        conditioned on an image instead, Zero-1-to-3, would score every render against nothing)."""
        if not getattr(prior, "reads_text", True):
            from dream3d import registry

            name = next((e.name for e in registry.entries("guidance") if e.target.endswith(":" + cls.__name__)),
                        cls.__name__)
            raise UserError(f"guidance {name} scores renders against the text prompt, and the '{prior.name}' prior "
                            "reads no text (it is conditioned on a reference image); use --guidance zero123 with --image")

    def __call__(self, out: RenderOutput, cams: Cameras, prompt, progress: float,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> GuidanceOutput:
        """The loss whose gradient in `out` is the rule's update; `progress` in [0, 1]."""
        raise NotImplementedError

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group (VSD's LoRA); their learning rates come from the config's `lr`."""
        return {}

    def modules(self) -> dict[str, nn.Module]:
        """State that belongs to the stage's checkpoint (LoRA, noise fields), by name."""
        return {}

    def close(self) -> None:
        """Remove whatever the rule installed on the shared prior (adapters, hooks); called as its stage ends."""
