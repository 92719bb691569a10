"""Triangle-mesh geometry over plain vertex / face tensors: normals and smoothness terms.

- `face_normals`, `vertex_normals`: outward normals of a counter-clockwise mesh
  (vertex normals are the area-weighted mean of the adjacent faces').
- `normal_consistency`: mean over interior edges of 1 - cos(angle between the
  normals of the edge's two faces); 0 for a flat sheet, it penalises creases.
- `laplacian_smoothness`: mean over vertices of |v - mean of its neighbours|^2
  (the uniform "umbrella" Laplacian); it pulls vertices towards their 1-ring centroid.
The two terms accept precomputed `MeshEdges` so a renderer that already built them shares
them; they are differentiable losses, weighted by the representation's `loss_weights`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from dream3d.render.raster import MeshEdges, mesh_edges


def face_normals(verts: Tensor, faces: Tensor, unit: bool = True) -> Tensor:
    """[F, 3] normals (counter-clockwise winding points them outwards); area-weighted
    (twice the area long) when not unit."""
    v0, v1, v2 = (verts.index_select(0, faces[:, j]) for j in range(3))  # no [F, 3, 3] intermediate in the backward
    n = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-20) if unit else n


def vertex_normals(verts: Tensor, faces: Tensor, area_normals: Tensor | None = None) -> Tensor:
    """[V, 3] unit normals: the area-weighted mean of the adjacent faces' normals
    (`face_normals(verts, faces, unit=False)`, recomputed unless given)."""
    n = area_normals if area_normals is not None else face_normals(verts, faces, unit=False)
    acc = torch.zeros_like(verts)
    for j in range(3):  # one add per corner: repeating n three times has a slow strided-sum backward
        acc = acc.index_add(0, faces[:, j], n)
    return acc / acc.norm(dim=-1, keepdim=True).clamp(min=1e-20)


def normal_consistency(verts: Tensor, faces: Tensor, edges: MeshEdges | None = None, normals: Tensor | None = None) -> Tensor:
    """Scalar: mean of 1 - n_a . n_b over edges shared by two faces a, b (0 if none);
    normals [F, 3] are the unit face normals, recomputed unless given."""
    edges = edges if edges is not None else mesh_edges(faces, verts.shape[0])
    pairs = edges.edge_faces[(edges.edge_faces[:, 1] >= 0).nonzero().squeeze(1)]
    if pairs.shape[0] == 0:
        return verts.sum() * 0.0
    n = normals if normals is not None else face_normals(verts, faces)
    n_a, n_b = n.index_select(0, pairs[:, 0]), n.index_select(0, pairs[:, 1])
    return (1.0 - (n_a * n_b).sum(-1)).mean()


def laplacian_smoothness(verts: Tensor, faces: Tensor, edges: MeshEdges | None = None) -> Tensor:
    """Scalar: mean over vertices with neighbours of |v - mean(neighbours)|^2 (0 if none)."""
    edges = edges if edges is not None else mesh_edges(faces, verts.shape[0])
    a, b = edges.edges.unbind(1)
    total = torch.zeros_like(verts).index_add_(0, a, verts.index_select(0, b)).index_add_(0, b, verts.index_select(0, a))
    degree = torch.bincount(torch.cat([a, b]), minlength=verts.shape[0]).to(verts.dtype)
    if bool((degree > 0).all()):  # every vertex on an edge (meshes without stray vertices)
        delta = verts - total / degree[:, None]
    else:
        used = (degree > 0).nonzero().squeeze(1)
        if used.shape[0] == 0:
            return verts.sum() * 0.0
        delta = verts.index_select(0, used) - total.index_select(0, used) / degree.index_select(0, used)[:, None]
    return delta.square().sum(-1).mean()
