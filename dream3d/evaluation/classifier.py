"""A small CNN that reads what a render shows: object, colour and view direction.

It is the judge behind `dream3d eval`: trained on the embedded prior's procedural
renders (see `train_classifier.py`), it tells whether a generated asset's renders
look like the prompt's (colour, object) and, for objects with a front (house,
chair, robot, snowman), from which side each render was seen.

View labels are azimuth-based only: a camera's label is `view_names` evaluated at
elevation 0, so a high camera is still "front", "side" or "back" (never "overhead"),
because the question the Janus measure asks is which side of the object faces the
camera. The view head is trained only on fronted objects; on the others its output
means nothing.

Saved like a diffusers component: `config.json` (architecture + label lists) and
`model.safetensors` in one folder. Each world has its own (`classifier_dir`): the
tiny-shapes one in assets/classifier, any other in assets/classifier-{world}.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from dream3d.errors import UserError
from dream3d.priors.worlds import DEFAULT_WORLD, World

VIEW_LABELS = ("front", "side", "back")
"""The view head's classes (azimuth-based view names)."""


def classifier_dir(world: str = DEFAULT_WORLD) -> Path:
    """The shipped classifier of a world in the source tree: assets/classifier for tiny-shapes
    (where it always was), assets/classifier-{world} for the others."""
    assets = Path(__file__).resolve().parents[2] / "assets"
    return assets / "classifier" if world == DEFAULT_WORLD else assets / f"classifier-{world}"


def default_classifier_dir() -> Path:
    """assets/classifier in the source tree (the tiny-shapes classifier)."""
    return classifier_dir(DEFAULT_WORLD)


@dataclass
class ClassifierConfig:
    objects: list[str] = field(default_factory=list)
    """Object names, in the order of the object head's logits."""
    colours: list[str] = field(default_factory=list)
    """Colour names, in the order of the colour head's logits."""
    views: list[str] = field(default_factory=lambda: list(VIEW_LABELS))
    """View names, in the order of the view head's logits."""
    fronted_objects: list[str] = field(default_factory=list)
    """Objects with a distinct front, the only ones the view head was trained on."""
    resolution: int = 64
    """Side of the square input image; other sizes are resized (antialiased) in `predict`."""
    channels: list[int] = field(default_factory=lambda: [24, 32, 48, 64, 96])
    """Width of the stem (a stride-2 conv) and of each conv block after it; every block
    after the first halves the resolution again (64 -> 32 -> 32 -> 16 -> 8 -> 4)."""
    hidden: int = 128
    """Width of the shared layer before the three heads."""


@dataclass
class ClassifierOutput:
    object_logits: Tensor  # [N, n_objects]
    colour_logits: Tensor  # [N, n_colours]
    view_logits: Tensor  # [N, n_views]


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(),
        )


class ShapeClassifier(nn.Module):
    """Conv blocks -> global average and max pooling -> shared layer -> three linear heads.

    Max pooling next to the average keeps small, telling details (a door, a carrot
    nose, a pair of eyes) from being averaged away; that is what tells front from back.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        if not cfg.objects or not cfg.colours:
            raise ValueError("ClassifierConfig needs its object and colour label lists")
        self.cfg = cfg
        # A strided stem: full-resolution 3x3 blocks cost 2x the step time for little accuracy.
        c_in = cfg.channels[0]
        blocks: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, c_in, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_in), nn.SiLU())]
        for i, c in enumerate(cfg.channels[1:]):
            blocks.append(_ConvBlock(c_in, c, stride=1 if i == 0 else 2))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.shared = nn.Sequential(nn.Linear(2 * c_in, cfg.hidden), nn.SiLU(), nn.Dropout(0.1))
        self.object_head = nn.Linear(cfg.hidden, len(cfg.objects))
        self.colour_head = nn.Linear(cfg.hidden, len(cfg.colours))
        self.view_head = nn.Linear(cfg.hidden, len(cfg.views))

    def forward(self, x: Tensor) -> ClassifierOutput:
        """x [N, 3, R, R] in [-1, 1]."""
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        h = self.shared(pooled)
        return ClassifierOutput(self.object_head(h), self.colour_head(h), self.view_head(h))

    def to_input(self, images: Tensor) -> Tensor:
        """images [N, H, W, 3] in [0, 1] -> [N, 3, R, R] in [-1, 1] at the model's resolution."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [N, H, W, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float().clamp(0.0, 1.0)
        r = self.cfg.resolution
        if x.shape[-2:] != (r, r):
            # Antialiased: a 256-pixel turntable frame must not alias down to 64.
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return x * 2.0 - 1.0

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 64) -> ClassifierOutput:
        """Logits for images [N, H, W, 3] in [0, 1] of any size (eval mode, no gradients)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        outs = []
        for start in range(0, images.shape[0], batch_size):
            outs.append(self(self.to_input(images[start:start + batch_size].to(device))))
        self.train(was_training)
        return ClassifierOutput(*(torch.cat([getattr(o, k) for o in outs]).cpu()
                                  for k in ("object_logits", "colour_logits", "view_logits")))

    def save_pretrained(self, folder: Path) -> None:
        """Write config.json and model.safetensors (float32) into `folder`."""
        from dream3d.atomic import write_bytes_atomic
        from safetensors.torch import save as save_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().float().contiguous() for k, v in self.state_dict().items()
                   if v.is_floating_point()}
        write_bytes_atomic({
            folder / "model.safetensors": save_bytes(tensors),
            folder / "config.json": (json.dumps(asdict(self.cfg), indent=2) + "\n").encode(),
        })

    @classmethod
    def from_pretrained(cls, folder: Path, device: torch.device | str = "cpu") -> "ShapeClassifier":
        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise UserError(f"no evaluation classifier in {folder} (config.json and model.safetensors are needed); "
                            f"train one with `python -m dream3d.evaluation.train_classifier --out {folder}`")
        known = set(ClassifierConfig.__dataclass_fields__)
        cfg = ClassifierConfig(**{k: v for k, v in json.loads(cfg_path.read_text()).items() if k in known})
        model = cls(cfg)
        state = load_file(str(weights))
        # Integer buffers (BatchNorm's num_batches_tracked) are not saved; keep their defaults.
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise UserError(f"{weights} does not match {cfg_path}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return model.to(device).eval()


_CACHE: dict[str, ShapeClassifier] = {}


def load_classifier(folder: Path | None = None, world: World | None = None) -> ShapeClassifier:
    """The classifier in `folder`, else the one shipped for `world` (default tiny-shapes), loaded once
    per process, on CPU. With a world, the classifier must know all its objects and colours."""
    if folder is None:
        name = world.name if world is not None else DEFAULT_WORLD
        folder = classifier_dir(name)
        if not (folder / "config.json").is_file():
            raise UserError(f"no evaluation classifier for the {name} world (expected {folder}); train one with "
                            f"`python -m dream3d.evaluation.train_classifier --world {name} --out {folder}`")
    folder = Path(folder)
    key = str(folder.resolve())
    if key not in _CACHE:
        _CACHE[key] = ShapeClassifier.from_pretrained(folder)
    clf = _CACHE[key]
    if world is not None:
        unknown = [w for w in world.objects + world.colours if w not in clf.cfg.objects + clf.cfg.colours]
        if unknown:
            raise UserError(f"the classifier in {folder} does not know {', '.join(unknown[:4])}"
                            f"{' ...' if len(unknown) > 4 else ''} of the {world.name} world; train one with "
                            f"`python -m dream3d.evaluation.train_classifier --world {world.name}`")
    return clf


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["VIEW_LABELS", "ClassifierConfig", "ClassifierOutput", "ShapeClassifier", "classifier_dir",
           "default_classifier_dir", "load_classifier", "n_parameters"]
