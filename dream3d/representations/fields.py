"""Field components the representations share (as nerfstudio's `field_components`): the
hash-grid settings, a column MLP, and the albedo field that reads a hash grid through it.

The NeRF and DMTet both colour their surfaces with one `HashGridAlbedo`, built from one
`HashGridConfig`, so a NeRF's albedo field can be copied into a DMTet as it is. Their
configs extend `HashGridConfig`, so the settings stay flat user-facing keys
(`representation.n_levels=16`) declared once. The NeRF's density MLP reads the albedo
field's hash features too (`features`): one hash grid for both, as in Instant-NGP.

Inside a field, points are columns [3, K] (the point axis stays contiguous); the
public `forward` takes and returns rows [N, 3] like every `albedo(points)`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream3d.representations.hash_encoding import HashEncoding

CHUNK = 1 << 16  # points per field evaluation when querying many points (grids, exports)


@dataclass
class HashGridConfig:
    n_levels: int = 8
    """Hash-grid levels."""
    n_features: int = 2
    """Features per hash-grid level."""
    log2_table_size: int = 16
    """log2 of the hash table size per level."""
    base_resolution: int = 16
    """Grid resolution of the coarsest level."""
    per_level_scale: float = 1.486
    """Resolution growth factor between levels (16 * 1.486^7 = 255 at the finest)."""
    hidden_dim: int = 32
    """Width of the field's MLPs (the albedo MLP, and the NeRF's density MLP)."""
    hidden_layers: int = 1
    """Hidden layers of the field's MLPs (the albedo MLP, and the NeRF's density MLP)."""

    def hash_grid(self) -> HashGridConfig:
        """These settings alone, as a plain HashGridConfig (a representation's config extends this class)."""
        return HashGridConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(HashGridConfig)})

    def build_encoding(self) -> HashEncoding:
        """A freshly initialised hash encoding with these settings."""
        return HashEncoding(self.n_levels, self.n_features, self.log2_table_size, self.base_resolution,
                            self.per_level_scale)


class ColumnMLP(nn.Module):
    """ReLU MLP on columns: x [D, K] -> [out, K] (points stay the contiguous axis)."""

    def __init__(self, d_in: int, width: int, hidden_layers: int, d_out: int):
        super().__init__()
        dims = [d_in] + [width] * hidden_layers + [d_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor, input_grad: bool = False) -> tuple[Tensor, Tensor | None]:
        """Outputs [out, K] and, if input_grad, d out[0] / d x [D, K]: one
        vector-Jacobian product written as plain ops, so autograd can differentiate it
        again without a double backward (this is how normals get gradients)."""
        masks = []
        for layer in self.layers[:-1]:
            pre = torch.addmm(layer.bias[:, None], layer.weight, x)
            masks.append(pre > 0)
            x = F.relu(pre)
        last = self.layers[-1]
        out = torch.addmm(last.bias[:, None], last.weight, x)
        if not input_grad:
            return out, None
        g = last.weight[0][:, None]  # [width, 1]
        for layer, mask in zip(reversed(self.layers[:-1]), reversed(masks)):
            g = layer.weight.t() @ (g * mask)
        return out, g


class HashGridAlbedo(nn.Module):
    """Albedo over the cube [-radius, radius]^3: world points -> hash-grid features ->
    ColumnMLP -> sigmoid. Its parameters are `encoding.table` and `mlp.*`."""

    def __init__(self, cfg: HashGridConfig, radius: float, encoding: HashEncoding | None = None):
        """`encoding`: a hash encoding built with `cfg.build_encoding()` elsewhere, to be read
        by other heads too (the NeRF builds its density MLP between the two, so that a seed
        gives the parameters it always gave); by default a new one."""
        super().__init__()
        self.radius = radius
        self.scale = 0.5 / radius  # d unit / d world
        self.encoding = encoding if encoding is not None else cfg.build_encoding()
        if self.encoding.out_dim != cfg.n_levels * cfg.n_features:
            raise ValueError("the shared hash encoding does not match the field's settings")
        self.mlp = ColumnMLP(self.encoding.out_dim, cfg.hidden_dim, cfg.hidden_layers, 3)

    def features(self, x: Tensor, with_jacobian: bool = False):
        """Hash features [D, K] at world points x [3, K]; with_jacobian, also their
        derivative [3, D, K] in grid units (multiply by `scale` for world units)."""
        return self.encoding((x + self.radius) * self.scale, with_jacobian=with_jacobian)

    def head(self, feat: Tensor) -> Tensor:
        """Albedo [3, K] in [0, 1] from hash features feat [D, K]."""
        return torch.sigmoid(self.mlp(feat)[0])

    def forward(self, points: Tensor) -> Tensor:
        """Albedo [N, 3] in [0, 1] at world points [N, 3], CHUNK points at a time."""
        out = [self.head(self.features(p.t().contiguous())).t() for p in points.split(CHUNK)]
        return torch.cat(out) if out else points.new_zeros(0, 3)

    @staticmethod
    def upgrade_state_dict(state_dict: dict, prefix: str, name: str) -> None:
        """Move, in place, the keys of a representation saved before the albedo field was one
        module (`{prefix}encoding.*`, `{prefix}albedo_mlp.*`) under `{prefix}{name}.`, so old
        checkpoints still load; call it from the representation's `_load_from_state_dict`."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            for old, new in (("encoding.", "encoding."), ("albedo_mlp.", "mlp.")):
                if rest.startswith(old):
                    state_dict.setdefault(f"{prefix}{name}.{new}{rest[len(old):]}", state_dict.pop(key))
