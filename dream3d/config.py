"""Typed run configuration: presets (YAML) < CLI flags < `--set key=value`.

Every section is a dataclass; unknown keys and wrong types are `UserError`s that
name the key and what is allowed. The resolved config is saved with each run
(config.yaml) and is all that resume and re-export need.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dream3d.cameras.orbit import CameraConfig
from dream3d.errors import UserError
from dream3d.guidance.reference_image import ImageConfig
from dream3d.guidance.shape_guide import ShapeConfig
from dream3d import registry
from dream3d.runfolder import check_stage_name
from dream3d.text import has_letters, normalize_text, short_repr
from dream3d.types import MESH_FORMATS, VIDEO_PANELS, MeshFormat, VideoPanel


@dataclass
class TrainConfig:
    steps: int = 600
    """Optimisation steps."""
    batch_size: int = 1
    """Views rendered per step."""
    resolution: int = 64
    """Side of the square training renders in pixels."""
    lr: dict[str, float] = field(default_factory=dict)
    """Adam learning rates that override the components' own (each representation's and guidance's
    config has an `lr` table for its parameter groups), e.g. {sdf: 5e-3}."""
    textureless_prob: float = 0.3
    """Probability of a shading-only (white albedo) render after the warm-up."""
    albedo_prob: float = 0.2
    """Probability of an unlit albedo render after the warm-up."""
    shading_warmup: float = 0.2
    """Fraction of the run rendered with albedo only, before lighting is used."""
    background: tuple[float, float] = (0.55, 0.85)
    """Grey level range of the random solid training background."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """Weights that override the representation's own regulariser weights (its config's `loss_weights`), e.g. {laplacian: 0.5}."""
    grad_clip: float = 0.0
    """Clip the parameter gradient norm to this (0 = off)."""
    preview_every: int = 100
    """Write a preview grid every N steps (0 = only at the end)."""
    ckpt_every: int = 200
    """Write a checkpoint every N steps (0 = only at the end)."""
    max_nan_steps: int = 10
    """Stop the run after this many consecutive non-finite steps."""


@dataclass
class ExportConfig:
    mesh: bool = True
    """Export a mesh at the end of the run."""
    video: bool = True
    """Export a turntable video at the end of the run."""
    formats: list[MeshFormat] = field(default_factory=lambda: list(MESH_FORMATS))
    """Mesh formats to write: glb, obj, ply."""
    mesh_resolution: int = 128
    """Grid resolution of the isosurface extraction."""
    decimate_faces: int = 30000
    """Decimate the mesh to about this many faces before UV unwrapping (0 = keep all): a noisy
    surface can have hundreds of thousands of faces, which xatlas takes many minutes to unwrap."""
    smooth_iterations: int = 100
    """Taubin smoothing passes (each shrinks, then inflates, so the volume stays), run on the
    extracted surface and again after decimation; 0 = none. 100 brought the default preset's
    meshes from 11-16 to 3-6 degrees of roughness with the same IoU (README, "Clean-up at export")."""
    min_component_fraction: float = 0.05
    """Pieces of the mesh whose area is below this share of the largest piece's are dropped as
    floaters; larger ones are kept (and the export says so). 0.05 keeps a handle or a second
    object, and drops the specks an isosurface leaves around a surface."""
    max_hole_edges: int = 64
    """Holes whose boundary has at most this many edges are closed; 0 = none. Holes a thin
    surface leaves are a few to a few dozen edges around; an opening the grid's bound cuts runs
    to hundreds and belongs to the shape."""
    texture_size: int = 1024
    """Side of the baked albedo texture (xatlas UVs); 0 = vertex colours only."""
    video_resolution: int = 512
    """Side of each turntable panel in pixels (the MP4; the GIF is scaled down to at most 256 rows)."""
    video_panels: list[VideoPanel] = field(default_factory=lambda: ["rgb", "normal"])
    """Turntable panels side by side: any of rgb, normal, depth."""
    video_frames: int = 60
    """Frames in the turntable video."""
    background: float = 0.7
    """Grey level of the preview and turntable background."""


@dataclass
class Component:
    """A resolved choice of a registered component with its typed options."""

    name: str
    options: Any  # the component's config dataclass

    def to_dict(self) -> dict:
        return {"name": self.name, **to_dict(self.options)}


@dataclass
class StageConfig:
    name: str = "main"
    """Stage name; its checkpoints go to ckpt/<name>/ and its previews to previews/<name>-step-N.png."""
    init: Literal["fresh", "previous"] = "fresh"
    """fresh: a generic initialisation; previous: convert the previous stage's result."""
    representation: Component | None = None
    """The stage's 3D representation: {name: ..., options} (default: the run's; always set once built)."""
    guidance: Component | None = None
    """The stage's guidance: {name: ..., options} (default: the run's; always set once built)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The stage's optimisation loop (fields not given come from the run's train section)."""


@dataclass
class RunConfig:
    prompt: str = ""
    """The text prompt."""
    negative_prompt: str = ""
    """What the asset should not look like (used by priors with CFG)."""
    seed: int = 0
    """Random seed; the same seed on CPU gives the same result."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: auto picks cuda when available."""
    model: str = "tiny-shapes"
    """The diffusion prior: tiny-shapes (embedded), a Hugging Face id, or a local folder."""
    allow_unknown_words: bool = False
    """Let the embedded prior proceed when the prompt has words it does not know."""
    prior_resolution: int = 0
    """Side of the image the prior scores (0 = its own: 512 for SD, 64 for IF, the embedded prior's)."""
    allow_download: bool = False
    """Let a Hugging Face id be downloaded when it is not in the local cache."""
    view_dependent: bool = True
    """Append ", front view" / ", side view" / ", back view" / ", overhead view" per camera."""
    representation: Component | None = None
    """The default 3D representation of every stage: {name: ..., options}."""
    guidance: Component | None = None
    """The default score-distillation guidance of every stage: {name: ..., options}."""
    stages: list[StageConfig] = field(default_factory=list)
    """The stages run in order (resolved); a preset without stages runs one stage, 'main'."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """Training and turntable cameras."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The default optimisation loop of every stage."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """What is written at the end of the run."""
    shape: ShapeConfig = field(default_factory=ShapeConfig)
    """An optional guide mesh that steers the geometry softly (`--shape`)."""
    image: ImageConfig = field(default_factory=ImageConfig)
    """An optional input photo that fixes the front view (`--image`)."""


# ---------------------------------------------------------------- coercion

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where lossless."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if a is type(None) and value is None:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError:
                pass
        raise UserError(f"config key '{key}': {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        return origin(_coerce(v, item, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{key}': expected text, got {value!r}")
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        data = to_dict(data)
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix or cls.__name__}' must be a mapping, got {_brief(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise UserError(f"unknown config key '{full}'; allowed: {', '.join(fields)}")
        factory = fields[key].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING:
            default = factory()
            if isinstance(default, dict):  # a table such as train.lr: the keys given change, the rest stay
                value = {**default, **value}
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain YAML-ready data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- components

def own_table(options: Any, key: str) -> dict[str, float]:
    """The `key` table ("lr" or "loss_weights") a component's config declares, merged with those
    of the configs nested in it (CSD's VSD term); {} when it declares none."""
    if not dataclasses.is_dataclass(options):
        return {}
    table: dict[str, float] = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name == key and isinstance(value, dict):
            table.update(value)
        elif dataclasses.is_dataclass(value):
            table.update(own_table(value, key))
    return table


def stage_learning_rates(stage: StageConfig) -> dict[str, float]:
    """Learning rate per parameter group: the representation's and guidance's own, then train.lr."""
    return {**own_table(stage.representation.options, "lr"), **own_table(stage.guidance.options, "lr"),
            **stage.train.lr}


def stage_loss_weights(stage: StageConfig) -> dict[str, float]:
    """Weight per regulariser: the representation's own, then train.loss_weights."""
    return {**own_table(stage.representation.options, "loss_weights"), **stage.train.loss_weights}


def registered_table_keys(key: str) -> set[str]:
    """Every name any registered component declares in its `key` table."""
    return {name for kind in ("representation", "guidance") for entry in registry.entries(kind)
            for name in own_table(entry.config_class()(), key)}


def _takers(kind: str, option: str) -> list[str]:
    """The components of `kind` whose config has `option`, directly or one section down ("csd (as sds.x)")."""
    found = []
    for entry in registry.entries(kind):
        cfg = entry.config_class()
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        if option in fields:
            found.append(entry.name)
            continue
        hints = typing.get_type_hints(cfg)
        found += [f"{entry.name} (as {n}.{option})" for n in fields
                  if dataclasses.is_dataclass(hints[n]) and option in {f.name for f in dataclasses.fields(hints[n])}]
    return found


def _component(key: str, data: Any, default: str) -> Component:
    """`key` is where it sits in the config ("representation", "stages.1.guidance")."""
    data = dict(data or {})
    name = data.pop("name", default)
    kind = key.rsplit(".", 1)[-1]
    entry = registry.lookup(kind, name)
    own = {f.name for f in dataclasses.fields(entry.config_class())}
    for option in data:  # an option of other components of the kind (guidance.perp_neg on vsd): say which take it
        takers = _takers(kind, option) if option not in own else []
        if takers:
            raise UserError(f"config key '{key}.{option}': {kind} '{name}' cannot use it; "
                            f"{', '.join(takers)} can")
    return Component(name, from_dict(entry.config_class(), data, key))


def deep_merge(base: Any, over: Any) -> Any:
    """`over` on top of `base`, recursively for mappings."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base.get(k), v)
        return out
    return base if over is None else over


def _brief(value: Any, limit: int = 60) -> str:
    """repr(value) cut for a one-line message (a section may hold pages of garbage)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mapping(value: Any, key: str) -> dict:
    """A config section as a new dict ({} when absent or empty); anything else names the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"config section '{key}' must be a mapping, got {_brief(value)}")
    return dict(value)


def _stage_component(default: dict, given: Any) -> dict:
    """A stage's component: the run's default, overridden by the stage's own options;
    naming another component drops the default's options (they belong to another class)."""
    given = dict(given or {})
    if "name" in given and given["name"] != default.get("name"):
        return given
    return deep_merge(default, given)


def build(data: dict) -> RunConfig:
    if not isinstance(data, dict):
        raise UserError(f"a run config must be a mapping of settings, got {_brief(data)}")
    data = dict(data)
    rep = _mapping(data.pop("representation", None), "representation")
    gui = _mapping(data.pop("guidance", None), "guidance")
    train = _mapping(data.pop("train", None), "train")
    raw_stages = data.pop("stages", None) or [{}]
    if not isinstance(raw_stages, list):
        raise UserError(f"config key 'stages' must be a list, got {raw_stages!r}")
    rep.setdefault("name", "hashgrid_nerf")
    gui.setdefault("name", "sds")
    cfg = from_dict(RunConfig, data)
    cfg.prompt, cfg.negative_prompt = normalize_text(cfg.prompt), normalize_text(cfg.negative_prompt)
    cfg.representation = _component("representation", rep, "hashgrid_nerf")
    cfg.guidance = _component("guidance", gui, "sds")
    cfg.train = from_dict(TrainConfig, train, "train")
    for i, raw in enumerate(raw_stages):
        raw = _mapping(raw, f"stages.{i}")
        stage_rep = _stage_component(rep, _mapping(raw.pop("representation", None), f"stages.{i}.representation"))
        stage_gui = _stage_component(gui, _mapping(raw.pop("guidance", None), f"stages.{i}.guidance"))
        raw["train"] = deep_merge(train, _mapping(raw.get("train"), f"stages.{i}.train"))
        stage = from_dict(StageConfig, raw, f"stages.{i}")
        stage.representation = _component(f"stages.{i}.representation", stage_rep, "hashgrid_nerf")
        stage.guidance = _component(f"stages.{i}.guidance", stage_gui, "sds")
        cfg.stages.append(stage)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    if not cfg.prompt.strip() and not cfg.image.path:  # with a photo, reference_for says when one is needed
        raise UserError("the prompt is empty: give a text such as \"a red cube\"")
    if cfg.prompt.strip() and not has_letters(cfg.prompt):
        raise UserError(f"the prompt {short_repr(cfg.prompt)} has no letters or digits (after Unicode "
                        "normalisation): give a text such as \"a red cube\"")
    names = [s.name for s in cfg.stages]
    for i, name in enumerate(names):  # names become folders: ckpt/<name>/, previews/<name>-step-N.png
        check_stage_name(name, f"stages.{i}.name")
        if name in names[:i]:
            raise UserError(f"config key 'stages.{i}.name': '{name}' names an earlier stage too; "
                            f"stage names must differ, got {', '.join(names)}")
    if cfg.stages and cfg.stages[0].init == "previous":
        raise UserError(f"stage '{cfg.stages[0].name}' has init: previous, but it is the first stage")
    for stage in cfg.stages:
        t = stage.train
        where = "train" if len(cfg.stages) == 1 else f"stage '{stage.name}': train"
        for key in ("steps", "batch_size", "resolution"):
            if getattr(t, key) <= 0:
                raise UserError(f"{where}.{key} must be positive, got {getattr(t, key)}")
        if t.resolution < 16 or t.resolution > 1024:
            raise UserError(f"{where}.resolution must be between 16 and 1024, got {t.resolution}")
    for key, what in (("lr", "parameter group"), ("loss_weights", "regulariser")):
        known = registered_table_keys(key)
        for stage in cfg.stages:
            unknown = sorted(set(getattr(stage.train, key)) - known)
            if unknown:
                raise UserError(f"train.{key}.{unknown[0]}: no component has a {what} '{unknown[0]}'; "
                                f"known: {', '.join(sorted(known))}")
    if not cfg.export.video_panels:
        raise UserError(f"export.video_panels: choose one or more of {', '.join(VIDEO_PANELS)}")
    from dream3d.limits import check_export, check_seed

    check_seed(cfg.seed)
    check_export(cfg.export)  # the export's ranges, so a bad one fails before training (memory: pipeline)


def run_config_to_dict(cfg: RunConfig) -> dict:
    d = to_dict(cfg)
    d["representation"] = cfg.representation.to_dict()
    d["guidance"] = cfg.guidance.to_dict()
    d["stages"] = [{**to_dict(s), "representation": s.representation.to_dict(), "guidance": s.guidance.to_dict()}
                   for s in cfg.stages]
    return d


def save(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(run_config_to_dict(cfg), sort_keys=False))


def load(path: Path) -> RunConfig:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:  # ValueError: not UTF-8 text
        reason = " ".join(str(e).split())  # YAML errors span several lines
        raise UserError(f"cannot read the run config {path}: {reason[:200]}") from None
    if not isinstance(data, dict):
        held = "nothing" if data is None else f"{type(data).__name__} {_brief(data, 40)}"
        raise UserError(f"the run config {path} is not a mapping of settings (it holds {held})")
    try:
        return build(data)
    except UserError as e:
        raise UserError(f"the run config {path}: {e}") from None
