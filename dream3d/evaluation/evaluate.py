"""`dream3d eval`: how well a finished run's renders match its prompt.

A turntable of the finished representation is rendered and read by the
evaluation classifier (`classifier.py`). Per view it reports the predicted
object, colour and (for fronted objects) the side of the object facing the
camera; over views:

- object / colour accuracy: the fraction of views read as the prompt's object / colour;
- R-precision (top-1) over the vocabulary: the fraction of views for which the
  prompt's caption ranks first among all colour x object captions (120 for the
  embedded vocabulary), a caption (c, o) scoring log p(o | image) + log p(c | image).
  Ties with the prompt's caption count in its favour;
- Janus rate, for objects with a front (house, chair, robot, snowman): among the
  views that look at the object's side or back, the fraction read as "front" (the
  multi-face failure of score distillation, a front drawn on every side).
  Views within `BOUNDARY_MARGIN` degrees of the front/side boundary (45 degrees
  from the front) are ambiguous and left out of the Janus rate; with 8 views the
  candidates are 90, 135, 180, 225 and 270 degrees. The view accuracy also leaves
  out views near the side/back boundary (135 degrees), keeping 0, 90, 180, 270.

The classifier is the one shipped for the world of the run's prior (`prior_world`:
prior.json's "world", tiny-shapes when it names none); a run whose prior has no world
(a real checkpoint) is read by the tiny-shapes one. Prompts outside the classifier's
vocabulary still get per-view predictions; the fidelity numbers are then None.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from rich.table import Table
from torch import Tensor

from dream3d.cameras.views import view_names
from dream3d.atomic import write_text_atomic
from dream3d.evaluation.classifier import ShapeClassifier, load_classifier
from dream3d.priors.vocab import parse_prompt
from dream3d.priors.worlds import World, world_of_meta

BOUNDARY_MARGIN = 15.0
"""Degrees around the 45 / 135 degree view boundaries inside which a view's expected name is ambiguous."""
EVAL_RESOLUTION = 64
"""Side of the turntable renders handed to the classifier."""
EVAL_BACKGROUND = 0.7
"""Grey level of the turntable background."""


# ---------------------------------------------------------------- scoring rules (plain tensors)


def caption_scores(object_logits: Tensor, colour_logits: Tensor) -> Tensor:
    """[N, C, O] score of every (colour, object) caption: log p(object) + log p(colour).

    object_logits [N, O], colour_logits [N, C]."""
    log_po = torch.log_softmax(object_logits.float(), dim=-1)
    log_pc = torch.log_softmax(colour_logits.float(), dim=-1)
    return log_pc[:, :, None] + log_po[:, None, :]


def caption_ranks(object_logits: Tensor, colour_logits: Tensor, colour_index: int, object_index: int) -> Tensor:
    """[N] rank of the caption (colour_index, object_index) among all captions, 0 = top
    (the number of captions scoring strictly higher)."""
    scores = caption_scores(object_logits, colour_logits)
    target = scores[:, colour_index, object_index]
    return (scores > target[:, None, None]).flatten(1).sum(-1)


def azimuth_from_front(azimuth: Tensor) -> Tensor:
    """[N] absolute angle in [0, 180] between the camera and the object's front (+Z)."""
    return ((azimuth.float() + 180.0) % 360.0 - 180.0).abs()


def expected_views(azimuth: Tensor) -> list[str]:
    """The side of the object each camera looks at, from azimuth [N] degrees alone
    (the evaluation classifier's labels: elevation never makes it "overhead")."""
    return view_names(torch.zeros_like(azimuth.float()), azimuth.float())


def unambiguous(azimuth: Tensor, margin: float = BOUNDARY_MARGIN) -> Tensor:
    """[N] bool: the camera is at least `margin` degrees away from the 45 / 135 boundaries."""
    a = azimuth_from_front(azimuth)
    return ((a - 45.0).abs() >= margin) & ((a - 135.0).abs() >= margin)


def janus_candidates(azimuth: Tensor, margin: float = BOUNDARY_MARGIN) -> Tensor:
    """[N] bool: the camera looks at the side or back, at least `margin` degrees past the
    front/side boundary (45 degrees), so a "front" reading is clearly wrong."""
    return azimuth_from_front(azimuth) >= 45.0 + margin


def janus_views(candidates: list[bool], predicted: list[str]) -> tuple[list[int], int]:
    """Indices of Janus views (a candidate read as "front") and the number of candidates."""
    idx = [i for i, c in enumerate(candidates) if c]
    return [i for i in idx if predicted[i] == "front"], len(idx)


# ---------------------------------------------------------------- images -> result


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def evaluate_images(
    images: Tensor,  # [N, H, W, 3] in [0, 1]
    prompt: str,
    azimuth: Tensor | None = None,  # [N] degrees, 0 = the object's front; needed for the view measures
    classifier: ShapeClassifier | None = None,
) -> dict:
    """Classify each image and score it against the prompt; a JSON-ready dict."""
    clf = classifier if classifier is not None else load_classifier()
    labels = clf.cfg
    out = clf.predict(images.detach().cpu())
    p_obj, p_col, p_view = (torch.softmax(t, -1) for t in (out.object_logits, out.colour_logits, out.view_logits))
    # The prompt is read with the classifier's own label words, whichever prior made the images.
    parsed = parse_prompt(prompt, World("classifier", tuple(labels.colours), tuple(labels.objects),
                                        tuple(labels.fronted_objects)))
    colour = parsed.colour if parsed.colour in labels.colours else None
    obj = parsed.object if parsed.object in labels.objects else None
    fronted = obj in labels.fronted_objects
    n = images.shape[0]

    ranks = None
    if colour is not None and obj is not None:
        ranks = caption_ranks(out.object_logits, out.colour_logits, labels.colours.index(colour), labels.objects.index(obj))
    expected = expected_views(azimuth) if azimuth is not None else [None] * n
    clear = unambiguous(azimuth).tolist() if azimuth is not None else [False] * n

    views = []
    for i in range(n):
        o, c, v = int(p_obj[i].argmax()), int(p_col[i].argmax()), int(p_view[i].argmax())
        views.append({
            "index": i,
            "azimuth": round(float(azimuth[i]), 2) if azimuth is not None else None,
            "expected_view": expected[i],
            "object": labels.objects[o], "object_prob": round(float(p_obj[i, o]), 4),
            "colour": labels.colours[c], "colour_prob": round(float(p_col[i, c]), 4),
            # The view head only means something on objects with a front.
            "view": labels.views[v] if fronted else None,
            "view_prob": round(float(p_view[i, v]), 4) if fronted else None,
            "front_prob": round(float(p_view[i, labels.views.index("front")]), 4) if fronted else None,
            "caption_rank": int(ranks[i]) if ranks is not None else None,
            "r_precision_hit": bool(ranks[i] == 0) if ranks is not None else None,
            "janus": False,
        })

    result: dict = {
        "prompt": prompt, "colour": colour, "object": obj, "fronted": fronted, "n_views": n,
        "n_captions": len(labels.colours) * len(labels.objects),
        "object_accuracy": _mean([float(v["object"] == obj) for v in views]) if obj else None,
        "colour_accuracy": _mean([float(v["colour"] == colour) for v in views]) if colour else None,
        "r_precision": _mean([float(v["r_precision_hit"]) for v in views]) if ranks is not None else None,
        "view_accuracy": None, "janus_views": None, "janus_candidates": None, "janus_rate": None,
        "janus_front_prob": None,
    }
    if fronted and azimuth is not None:
        predicted = [v["view"] for v in views]
        judged = [i for i in range(n) if clear[i]]
        result["view_accuracy"] = _mean([float(predicted[i] == expected[i]) for i in judged])
        candidates = janus_candidates(azimuth).tolist()
        janus, n_candidates = janus_views(candidates, predicted)
        for i in janus:
            views[i]["janus"] = True
        result["janus_views"] = janus
        result["janus_candidates"] = n_candidates
        result["janus_rate"] = len(janus) / n_candidates if n_candidates else None
        # A softer reading of the same failure: how much "front" the classifier sees from behind.
        result["janus_front_prob"] = _mean([views[i]["front_prob"] for i in range(n) if candidates[i]])
    if obj is None or colour is None:
        result["note"] = "the prompt names no colour and object the classifier knows; only per-view predictions"
    result["views"] = views
    return result


# ---------------------------------------------------------------- runs


def light_towards_camera(cams) -> Tensor:
    """[B, 3] unit vectors from the origin towards each camera (a head-light)."""
    eye = cams.c2w[:, :3, 3]
    return eye / eye.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def render_turntable(cfg, rep, n_views: int, resolution: int = EVAL_RESOLUTION) -> tuple[Tensor, Tensor]:
    """Diffuse-shaded turntable renders [n, R, R, 3] (CPU) of a representation and their azimuths [n]."""
    from dream3d.cameras import turntable

    device = next(iter(rep.parameters()), torch.empty(0)).device
    cams = turntable(cfg.camera, n_views, resolution, resolution).to(device)
    background = torch.full((n_views, 3), EVAL_BACKGROUND, device=device)
    with torch.no_grad():
        out = rep.render(cams, background, shading="diffuse", light_dir=light_towards_camera(cams))
    return out.rgb.detach().float().clamp(0, 1).cpu(), cams.azimuth.cpu()


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def prior_world(model: str) -> World | None:
    """The world of the prior a run names (RunConfig.model): that of a dream3d prior folder's
    prior.json, None for a diffusers checkpoint or a prior no longer on this machine."""
    from dream3d.errors import UserError
    from dream3d.priors.hub import resolve_model_folder
    from dream3d.priors.paths import EMBEDDED_NAMES, embedded_prior_dir

    try:
        folder = embedded_prior_dir(model) if model in EMBEDDED_NAMES else resolve_model_folder(model)
    except UserError:
        return None
    meta = folder / "prior.json"
    return world_of_meta(json.loads(meta.read_text()), folder) if meta.is_file() else None


def evaluate_run(run_dir: Path, n_views: int = 8, classifier: ShapeClassifier | None = None) -> dict:
    """Evaluate a finished run from its folder (what it gives the user: a mesh-ending run's mesh.glb, else
    its last stage); writes `eval.json` there and returns the result."""
    from dream3d import pipeline

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    cfg, rep = pipeline.load_asset(run_dir)
    # Refused before rendering when the prior's world has no classifier.
    classifier = classifier or load_classifier(world=prior_world(cfg.model))
    images, azimuth = render_turntable(cfg, rep, n_views)
    result = evaluate_images(images, cfg.prompt, azimuth=azimuth, classifier=classifier)
    result = {"run_dir": str(run_dir), "elevation": float(cfg.camera.eval_elevation),
              "resolution": EVAL_RESOLUTION, "seconds": round(time.perf_counter() - t0, 2), **result}
    write_json_atomic(run_dir / "eval.json", result)
    return result


# ---------------------------------------------------------------- presentation


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f}%"


def format_table(result: dict) -> Table:
    """One row per view plus a summary caption."""
    table = Table(title=f"eval: {result['prompt']!r}", title_justify="left")
    for name, justify in (("view", "right"), ("azimuth", "right"), ("expected", "left"), ("object", "left"),
                          ("colour", "left"), ("seen from", "left"), ("caption rank", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    for v in result["views"]:
        obj_ok = result["object"] is None or v["object"] == result["object"]
        col_ok = result["colour"] is None or v["colour"] == result["colour"]
        mark = lambda ok: "" if ok else "[red]"  # noqa: E731
        table.add_row(
            str(v["index"]),
            "" if v["azimuth"] is None else f"{v['azimuth']:.0f}",
            v["expected_view"] or "",
            f"{mark(obj_ok)}{v['object']} ({v['object_prob']:.2f})",
            f"{mark(col_ok)}{v['colour']} ({v['colour_prob']:.2f})",
            "" if v["view"] is None else f"{v['view']} ({v['view_prob']:.2f})",
            "" if v["caption_rank"] is None else f"{v['caption_rank'] + 1}/{result['n_captions']}",
            "[red]Janus" if v["janus"] else "",
        )
    parts = [f"object {_pct(result['object_accuracy'])}", f"colour {_pct(result['colour_accuracy'])}",
             f"R-precision@1 {_pct(result['r_precision'])}"]
    if result["fronted"]:
        rate = result["janus_rate"]
        janus = "n/a" if rate is None else f"{_pct(rate)} ({len(result['janus_views'])}/{result['janus_candidates']})"
        parts += [f"view {_pct(result['view_accuracy'])}", f"Janus {janus}"]
    table.caption = "  ".join(parts) + (f"\n{result['note']}" if "note" in result else "")
    return table


def eval_command(run_dir: Path, n_views: int = 8, console=None) -> dict:
    """What `dream3d eval RUN_DIR` does: evaluate, write eval.json, print the table."""
    from rich.console import Console

    result = evaluate_run(Path(run_dir), n_views=n_views)
    console = console or Console()
    console.print(format_table(result))
    console.print(f"wrote {Path(run_dir) / 'eval.json'}")
    return result
