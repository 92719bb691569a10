"""The gallery's index.html: one card per run, static, every path relative (works offline).

The 3D view is Google's <model-viewer> web component (npm @google/model-viewer,
its self-contained build copied next to the page), with a run's Gaussian splats
beside it (splats.py); the turntable is a <video> with the MP4, falling back to
the GIF when the browser cannot decode it.

Everything from a run folder (texts, file and folder names) is data, never markup: texts and
attribute values go through `_text`, file names through `_url` (percent-quoted relative paths,
so no name can be a `javascript:` or any other scheme's URL, then attribute-escaped). Only the
fixed set of state names becomes a CSS class.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from dream3d.gallery import splats
from dream3d.gallery.collect import RunCard, clean_text

STYLE = """
:root { color-scheme: light dark; --card: #f4f4f2; --muted: #666; }
@media (prefers-color-scheme: dark) { :root { --card: #232323; --muted: #aaa; } }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; }
header p { color: var(--muted); margin: 0.2rem 0 1rem; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1rem; }
article { background: var(--card); border-radius: 8px; padding: 0.8rem; }
article h2 { font-size: 1.05rem; margin: 0 0 0.3rem; }
.state { font-size: 0.75rem; padding: 0.05rem 0.4rem; border-radius: 4px; background: #888; color: #fff; }
.state.done { background: #2e7d32; } .state.failed { background: #c62828; } .state.running { background: #ef6c00; }
.media { display: flex; flex-direction: column; gap: 0.4rem; margin: 0.5rem 0; }
model-viewer { width: 100%; height: 280px; background: #b3b3b3; border-radius: 4px; }
.views { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 0.4rem; }
.views model-viewer, .splats { height: 240px; }
.splats { position: relative; background: #b3b3b3; border-radius: 4px; overflow: hidden; }
.splats canvas { position: absolute; inset: 0; width: 100%; height: 100%; }
.splat-state { position: absolute; left: 0.4rem; bottom: 0.3rem; font-size: 0.75rem; color: #333; }
.media video, .media img.turntable { width: 100%; border-radius: 4px; image-rendering: pixelated; }
img.preview { width: 100%; image-rendering: pixelated; border-radius: 4px; }
img.reference { width: 96px; height: 96px; object-fit: contain; border-radius: 4px; background: #eee; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.1rem 0.6rem; margin: 0.4rem 0; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
.error { color: #c62828; overflow-wrap: anywhere; }
.nofile { display: flex; align-items: center; justify-content: center; color: var(--muted); }
"""

# A <video> whose every source fails (no decoder for it) shows the run's GIF instead.
SCRIPT = """
for (const video of document.querySelectorAll("video[data-fallback]")) {
  const sources = video.querySelectorAll("source");
  const last = sources[sources.length - 1];
  if (!last) continue;
  last.addEventListener("error", () => {
    const img = document.createElement("img");
    img.src = video.dataset.fallback;
    img.className = "turntable";
    img.alt = video.getAttribute("aria-label") || "turntable";
    video.replaceWith(img);
  });
}
"""

SCORES = (("object_accuracy", "object"), ("colour_accuracy", "colour"), ("r_precision", "R-precision@1"),
          ("view_accuracy", "view"), ("janus_rate", "Janus rate"))


STATES = ("done", "failed", "running", "queued", "interrupted", "trained", "unknown")
"""The states that become a CSS class (`.state.done`); any other state is shown as text only."""
LABEL_LIMIT = 300
"""Characters of a prompt repeated in alt texts and labels (the heading shows it whole)."""


def rel_url(path: Path, base: Path) -> str:
    """`path` relative to `base`, percent-quoted (`/` kept); bytes of undecodable names quoted as they are."""
    return quote(Path(os.path.relpath(path, base)).as_posix(), errors="surrogateescape")


def _url(path: Path, base: Path) -> str:
    """A file's URL for an attribute: relative, quoted, escaped (a no-op after quoting, kept on principle)."""
    return html.escape(rel_url(path, base), quote=True)


def _text(value: object, limit: int | None = None) -> str:
    """Any value as text of the page or of a quoted attribute value."""
    text = clean_text(str(value))
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    return html.escape(text, quote=True)


def _views(card: RunCard, base: Path, label: str, viewer: bool, splat_viewer: bool) -> list[str]:
    """The mesh's view and, for a run with splats, theirs beside it (a link each without the viewer)."""
    views = []
    if card.glb is not None and viewer:
        views.append(f'<model-viewer src="{_url(card.glb, base)}" alt="3D model: {label}" camera-controls '
                     f'auto-rotate interaction-prompt="none" shadow-intensity="0.6" exposure="1.1"></model-viewer>')
    elif card.glb is not None:
        views.append(f'<a class="nofile" href="{_url(card.glb, base)}">mesh.glb</a>')
    if card.splats is not None and splat_viewer:
        views.append(f'<div class="splats" data-src="{_url(card.splats, base)}" role="img" '
                     f'aria-label="Gaussian splats: {label}"><span class="splat-state">Gaussian splats</span></div>')
    elif card.splats is not None:
        views.append(f'<a class="nofile" href="{_url(card.splats, base)}">gaussians.ply</a>')
    return [f'<div class="views">{"".join(views)}</div>'] if len(views) > 1 else views


def _card(card: RunCard, base: Path, viewer: bool, splat_viewer: bool) -> str:
    label = _text(card.prompt or card.name, LABEL_LIMIT)
    state_class = f"state {card.state}" if card.state in STATES else "state"
    parts = [f'<article class="run" id="{_text(card.name)}">',
             f'<h2>{_text(card.prompt or card.name)}</h2>',
             f'<div><span class="{state_class}">{_text(card.state)}</span> <small>{_text(card.name)}</small></div>']
    media = _views(card, base, label, viewer, splat_viewer)
    if card.mp4 is not None:
        fallback = f' data-fallback="{_url(card.gif, base)}"' if card.gif is not None else ""
        media.append(f'<video autoplay loop muted playsinline preload="auto" aria-label="turntable: {label}"'
                     f'{fallback}><source src="{_url(card.mp4, base)}" type="video/mp4"></video>')
    elif card.gif is not None:
        media.append(f'<img class="turntable" src="{_url(card.gif, base)}" alt="turntable: {label}">')
    if media:
        parts.append(f'<div class="media">{"".join(media)}</div>')
    if card.reference_image is not None:
        parts.append(f'<img class="reference" src="{_url(card.reference_image, base)}" alt="input image: {label}" '
                     f'title="the input image (reference view)">')
    if card.preview is not None:
        parts.append(f'<img class="preview" src="{_url(card.preview, base)}" alt="preview grid: {label}" '
                     f'title="{_text(card.preview.name)}">')
    rows = dict(card.settings)
    if card.seconds is not None:
        rows["time"] = f"{card.seconds:.1f} s"
    if "psnr_db" in card.reference:  # the finished asset against the photo, at its camera
        l1 = card.reference.get("l1")
        rows["reference view"] = f"{card.reference['psnr_db']:.1f} dB" + (f", L1 {l1:.3f}" if l1 is not None else "")
    for key, name in SCORES:
        if key in card.eval:
            rows[name] = f"{100 * card.eval[key]:.0f}%"
    if card.source:
        rows["entry"] = card.source
    if rows:
        parts.append("<dl>" + "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in rows.items()) + "</dl>")
    if card.error:
        parts.append(f'<p class="error">{_text(card.error)}</p>')
    if card.folder is not None:
        parts.append(f'<small><a href="{_url(card.folder, base)}/">run folder</a></small>')
    parts.append("</article>")
    return "\n".join(parts)


def render_page(cards: list[RunCard], base: Path, title: str, viewer_script: str | None,
                splat_viewer: bool = False) -> str:
    """The whole page; `viewer_script` is the model-viewer module's URL (None: no 3D views);
    `splat_viewer`: splats.FILES lie next to the page (else gaussians.ply is a link)."""
    counts: dict[str, int] = {}
    for c in cards:
        counts[c.state] = counts.get(c.state, 0) + 1
    summary = ", ".join(f"{n} {_text(s, LABEL_LIMIT)}" for s, n in sorted(counts.items())) or "no runs"
    head = [
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title>",
        '<link rel="icon" href="data:,">',  # no favicon request (a 404 is a console error)
        f"<style>{STYLE}</style>",
    ]
    splat_viewer = splat_viewer and any(c.splats is not None for c in cards)
    if splat_viewer:  # before any module script: it maps the bare names the splat viewer imports
        head.append(splats.IMPORT_MAP)
    if viewer_script:
        head.append(f'<script type="module" src="{html.escape(quote(viewer_script), quote=True)}"></script>')
    body = ["</head>", "<body>", f"<header><h1>{_text(title)}</h1><p>{len(cards)} runs: {summary}</p></header>",
            "<main>", *(_card(c, base, viewer_script is not None, splat_viewer) for c in cards), "</main>",
            f"<script>{SCRIPT}</script>"]
    if splat_viewer:
        body.append(f'<script type="module">{splats.SCRIPT}</script>')
    body += ["</body>", "</html>"]
    return "\n".join(head + body) + "\n"
