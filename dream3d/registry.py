"""Names users type -> the classes that implement them (imported lazily)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from dream3d.errors import UserError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"
    config: str  # "module:ConfigClass"
    description: str

    def _load(self, ref: str):
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)

    def cls(self):
        return self._load(self.target)

    def config_class(self):
        return self._load(self.config)


_ENTRIES: dict[str, dict[str, Entry]] = {
    "representation": {
        "hashgrid_nerf": Entry(
            "hashgrid_nerf",
            "dream3d.representations.hashgrid_nerf:HashGridNeRF",
            "dream3d.representations.hashgrid_nerf:NeRFConfig",
            "Multiresolution hash-grid NeRF with density and albedo MLPs (Instant-NGP style).",
        ),
        "gaussians": Entry(
            "gaussians", "dream3d.representations.gaussians:Gaussians", "dream3d.representations.gaussians:GaussianConfig",
            "3D Gaussian splatting (DreamGaussian): gsplat on CUDA, a tile rasteriser on the CPU.",
        ),
        "dmtet": Entry(
            "dmtet", "dream3d.representations.dmtet:DMTet", "dream3d.representations.dmtet:DMTetConfig",
            "Deformable tetrahedral grid (DMTet): marching tets, differentiable rasterisation, hash-grid texture.",
        ),
        "fixed_mesh": Entry(
            "fixed_mesh", "dream3d.representations.fixed_mesh:FixedMesh",
            "dream3d.representations.fixed_mesh:FixedMeshConfig",
            "A user's mesh kept exactly as given, with a hash-grid albedo field to train (dream3d texture).",
        ),
    },
    "guidance": {
        "sds": Entry(
            "sds",
            "dream3d.guidance.sds:SDSGuidance",
            "dream3d.guidance.sds:SDSConfig",
            "Score distillation sampling (DreamFusion).",
        ),
        "vsd": Entry(
            "vsd", "dream3d.guidance.vsd:VSDGuidance", "dream3d.guidance.vsd:VSDConfig",
            "Variational score distillation (ProlificDreamer): a camera-conditioned LoRA of the prior trained alongside.",
        ),
        "csd": Entry(
            "csd", "dream3d.guidance.csd:CSDGuidance", "dream3d.guidance.csd:CSDConfig",
            "Coupled score distillation: 2D SDS/VSD plus multi-view SDS over 4 views 90 degrees apart.",
        ),
        "mvsds": Entry(
            "mvsds", "dream3d.guidance.mvsds:MVSDSGuidance", "dream3d.guidance.mvsds:MVSDSConfig",
            "Multi-view SDS (MVDream): 4 views 90 degrees apart denoised jointly by a joint-view prior, one t per group.",
        ),
        "csd-classifier": Entry(
            "csd-classifier", "dream3d.guidance.csd_classifier:ClassifierScoreGuidance",
            "dream3d.guidance.csd_classifier:ClassifierScoreConfig",
            "Classifier score distillation: the classifier term minus an annealed negative-prompt term, no CFG scale.",
        ),
        "cfd": Entry(
            "cfd", "dream3d.guidance.cfd:CFDGuidance", "dream3d.guidance.cfd:CFDConfig",
            "Consistent flow distillation: surface-attached consistent noise and a decreasing t schedule.",
        ),
        "gsd": Entry(
            "gsd", "dream3d.guidance.gsd:GSDGuidance", "dream3d.guidance.gsd:GSDConfig",
            "Geometry-aware score distillation: 3D-consistent noise and gradient consistency between nearby views.",
        ),
        "ism": Entry(
            "ism", "dream3d.guidance.ism:ISMGuidance", "dream3d.guidance.ism:ISMConfig",
            "Interval score matching (LucidDreamer): DDIM-inverted noisy target over an interval.",
        ),
        "zero123": Entry(
            "zero123", "dream3d.guidance.zero123:Zero123Guidance", "dream3d.guidance.zero123:Zero123Config",
            "Image-to-3D SDS under a Zero-1-to-3 / Stable Zero123 prior, relative to the --image's camera.",
        ),
    },
}

PRIORS = {
    "tiny-shapes": "Embedded pixel-space prior trained on procedural renders: 10 colours x 12 objects; CPU, offline.",
    "<hugging face id or folder>": "A Stable Diffusion or DeepFloyd IF checkpoint from a local folder or the Hugging Face cache.",
    "<zero-1-to-3 folder>": "A Zero-1-to-3 / Stable Zero123 checkpoint (diffusers layout) for --guidance zero123 with --image.",
}


def names(kind: str) -> list[str]:
    return list(_ENTRIES[kind])


def entries(kind: str) -> list[Entry]:
    return list(_ENTRIES[kind].values())


def lookup(kind: str, name: str) -> Entry:
    try:
        return _ENTRIES[kind][name]
    except KeyError:
        raise UserError(f"unknown {kind} '{name}'; choose one of: {', '.join(_ENTRIES[kind])}") from None


def build(kind: str, name: str, *args, **kwargs):
    return lookup(kind, name).cls()(*args, **kwargs)
