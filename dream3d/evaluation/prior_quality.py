"""How well the embedded prior draws what it is asked for, read by the shipped classifier.

Samples n images per "a {colour} {object}" prompt (every pair of the prior's world,
120 for tiny-shapes, with the prior's default sampler and CFG) and, for the objects
with a front, n per "..., {front|side|back} view" prompt with the matching camera.
A prior with joint views also draws, per fronted object and colour, n groups of four
views 90 degrees apart from the front (the plain prompt; the cameras alone say the
view), which should read front / side / back / side in the cameras' order.
Bars: object >= 95%, colour >= 97%, view >= 80%, four views >= 90%. The classifier
is the one shipped for the prior's world (`classifier_dir`) and must know its words.
"""
from __future__ import annotations

import torch
from rich.table import Table

from dream3d.cameras.orbit import CameraConfig, orbit_cameras
from dream3d.errors import UserError
from dream3d.evaluation.classifier import ShapeClassifier, load_classifier
from dream3d.priors.embedded_model import SAMPLE_GUIDANCE_SCALE, SAMPLE_VIEW_GUIDANCE_SCALE
from dream3d.priors.vocab import caption, quoted_words
from dream3d.priors.worlds import TINY_SHAPES

BARS = {"object": 0.95, "colour": 0.97, "view": 0.80, "four_views": 0.90}
VIEW_AZIMUTH = {"front": 0.0, "side": 90.0, "back": 180.0}
GROUP_VIEWS = ("front", "side", "back", "side")
"""What the four views of a group from azimuths 0, 90, 180 and 270 degrees show."""


def _cameras(n: int, azimuth: float | torch.Tensor):
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    cfg = CameraConfig()
    az = azimuth if isinstance(azimuth, torch.Tensor) else full(azimuth)
    return orbit_cameras(full(cfg.eval_elevation), az, full(cfg.eval_distance), full(cfg.eval_fov), 32, 32)


def four_view_reads(prior, clf: ShapeClassifier, obj: str, colours, n: int, guidance_scale: float, steps: int,
                    seed: int) -> list[float]:
    """1/0 per view: n joint groups per colour of `obj`, azimuths 0/90/180/270, read as GROUP_VIEWS."""
    prompts = [caption(c, obj) for c in colours]
    groups = len(prompts) * n
    azimuth = torch.tensor([0.0, 90.0, 180.0, 270.0]).repeat(groups)
    images = prior.sample([p for p in prompts for _ in range(n) for _ in GROUP_VIEWS], n=1,
                          guidance_scale=guidance_scale, steps=steps, seed=seed + 2,
                          camera=_cameras(4 * groups, azimuth), n_views=4)
    want = torch.tensor([clf.cfg.views.index(v) for v in GROUP_VIEWS]).repeat(groups)
    return (clf.predict(images).view_logits.argmax(-1) == want).float().tolist()


def measure_prior(prior, n: int = 8, guidance_scale: float = SAMPLE_GUIDANCE_SCALE, steps: int = 25, seed: int = 0,
                  colours=None, objects=None, classifier: ShapeClassifier | None = None,
                  view_guidance_scale: float = SAMPLE_VIEW_GUIDANCE_SCALE) -> dict:
    """Accuracy of the classifier's reading of the prior's samples, overall and per object
    (colours and objects: default those of the prior's world)."""
    world = getattr(prior, "world", TINY_SHAPES)
    clf = classifier or load_classifier(world=world)  # the classifier shipped for the prior's world
    colours = world.colours if colours is None else colours
    objects = world.objects if objects is None else objects
    unread = [w for w in colours if w not in clf.cfg.colours] + [w for w in objects if w not in clf.cfg.objects]
    if unread:
        raise UserError(f"the classifier does not know {quoted_words(unread)} of the {world.name} world; "
                        f"train one for it (python -m dream3d.evaluation.train_classifier --world {world.name})")
    per_object = {o: {"object": [], "colour": []} for o in objects}
    views, four = [], []
    for obj in objects:
        prompts = [caption(c, obj) for c in colours]
        images = prior.sample(prompts, n=n, guidance_scale=guidance_scale, steps=steps, seed=seed)
        out = clf.predict(images)
        want_colour = torch.tensor([clf.cfg.colours.index(c) for c in colours]).repeat_interleave(n)
        per_object[obj]["object"] = (out.object_logits.argmax(-1) == clf.cfg.objects.index(obj)).float().tolist()
        per_object[obj]["colour"] = (out.colour_logits.argmax(-1) == want_colour).float().tolist()
        if obj in world.fronted_objects and obj in clf.cfg.fronted_objects:
            for view, az in VIEW_AZIMUTH.items():
                vp = [caption(c, obj, view) for c in colours]
                imgs = prior.sample(vp, n=n, guidance_scale=guidance_scale, steps=steps, seed=seed + 1,
                                    camera=_cameras(len(vp) * n, az), view_guidance_scale=view_guidance_scale)
                pred = clf.predict(imgs).view_logits.argmax(-1)
                right = (pred == clf.cfg.views.index(view)).float().tolist()
                views += right
                per_object[obj].setdefault(f"{view} view", []).extend(right)
            if getattr(prior, "joint_views", False):
                right = four_view_reads(prior, clf, obj, colours, n, guidance_scale, steps, seed)
                four += right
                per_object[obj]["four views"] = right
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    result = {
        "samples_per_prompt": n, "guidance_scale": guidance_scale, "view_guidance_scale": view_guidance_scale,
        "steps": steps, "seed": seed,
        "object": mean([v for o in per_object.values() for v in o["object"]]),
        "colour": mean([v for o in per_object.values() for v in o["colour"]]),
        "view": mean(views),
        "four_views": mean(four),
        "per_object": {o: {k: mean(v) for k, v in d.items()} for o, d in per_object.items()},
    }
    measured = {"view": bool(views), "four_views": bool(four)}
    result["meets_bars"] = all(result[k] is not None and result[k] >= b for k, b in BARS.items()
                               if measured.get(k, True))
    return result


def format_table(result: dict) -> Table:
    table = Table(title=f"prior samples read by the classifier ({result['samples_per_prompt']} per prompt)")
    view_names = list(VIEW_AZIMUTH)
    for col in ("object", "object read", "colour read", *(f"{v} view read" for v in view_names), "four views read"):
        table.add_column(col)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for obj, d in result["per_object"].items():
        table.add_row(obj, pct(d["object"]), pct(d["colour"]), *(pct(d.get(f"{v} view")) for v in view_names),
                      pct(d.get("four views")))
    table.add_row("[bold]all", f"[bold]{pct(result['object'])}", f"[bold]{pct(result['colour'])}")
    table.caption = (f"view (fronted objects, front/side/back suffix): {pct(result['view'])}; four joint views "
                     f"(front/side/back/side): {pct(result.get('four_views'))}; bars: object 95%, colour 97%, view 80%, "
                     f"four views 90% -> {'met' if result['meets_bars'] else 'not met'}")
    return table
