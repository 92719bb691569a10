"""The gallery's Gaussian-splat view: a run's `gaussians.ply` drawn beside its mesh.

The drawing is @mkkellogg/gaussian-splats-3d (npm, a Three.js 3DGS renderer that reads
the standard 3DGS PLY), with the `three` module it imports; both are copied next to
the page (no CDN) and found through an import map. The page's own script checks each
file's PLY header before handing it over, since the library throws outside its promise
on some broken files; a file that cannot be shown is a line of text in its panel.
Panels load when they scroll into view and release their WebGL context when they leave
it: a browser keeps only about 16 contexts per page.
"""
from __future__ import annotations

import os
from pathlib import Path

NODE_MODULES = Path(__file__).resolve().parents[2] / "tools" / "node" / "node_modules"
"""Where the project's set-up (`npm ci --prefix tools/node`) installs the packages."""
FILES = {
    "gaussian-splats-3d.module.js": Path("@mkkellogg/gaussian-splats-3d/build/gaussian-splats-3d.module.js"),
    "three.module.min.js": Path("three/build/three.module.min.js"),
    "three.core.min.js": Path("three/build/three.core.min.js"),  # imported by three.module.min.js
}
"""File name next to the page -> path under a node_modules folder."""

IMPORT_MAP = ('<script type="importmap">{"imports": {"three": "./three.module.min.js", '
              '"gaussian-splats-3d": "./gaussian-splats-3d.module.js"}}</script>')

# Camera as the turntable's (CameraConfig.eval_*: 2.9 away, 15 degrees up, 45-degree
# field of view); dream3d's world is +Y up, front +Z, as the viewer's, so no axis flip.
SCRIPT = """
import * as THREE from "three";
import * as GS from "gaussian-splats-3d";

const NEEDED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"];
// The property types the viewer's PLY parser knows, with their sizes.
const SIZES = { double: 8, int: 4, uint: 4, float: 4, short: 2, ushort: 2, uchar: 1 };

function plyHeader(bytes) {  // {splats, degree} of a binary 3DGS PLY, or an Error saying what is wrong
  const head = new TextDecoder("latin1").decode(bytes.subarray(0, 1 << 16));
  const end = head.indexOf("end_header");
  if (!/^ply\\r?\\n/.test(head) || end < 0) throw new Error("not a PLY file");
  let format = "", count = NaN, stride = 0, element = 0;
  const names = [];
  for (const line of head.slice(0, end).split(/\\r?\\n/).slice(1)) {
    const w = line.trim().split(/\\s+/);
    if (w[0] === "format") format = w[1];
    else if (w[0] === "element" && ++element === 1) {
      if (w[1] !== "vertex") throw new Error("its first element is not 'vertex'");
      count = Number(w[2]);
    } else if (w[0] === "property" && element === 1) {
      if (!Object.hasOwn(SIZES, w[1])) throw new Error(`unsupported property '${line.slice(0, 60)}'`);
      stride += SIZES[w[1]];
      names.push(w[2]);
    }
  }
  if (format !== "binary_little_endian") {
    throw new Error(`PLY format '${format.slice(0, 30)}' (binary_little_endian needed)`);
  }
  if (!Number.isSafeInteger(count) || count <= 0) throw new Error("no splats in it");
  const missing = NEEDED.find((p) => !names.includes(p));
  if (missing) throw new Error(`not a Gaussian splat PLY (no '${missing}')`);
  const body = head.indexOf("\\n", end) + 1;
  if (bytes.length - body < count * stride) throw new Error(`truncated: ${count} splats announced`);
  const rest = names.filter((n) => n.startsWith("f_rest_")).length / 3;
  const degree = Math.round(Math.sqrt(rest + 1)) - 1;
  return { splats: count, degree: (degree + 1) ** 2 - 1 === rest ? Math.min(degree, 2) : 0 };
}

async function open(panel) {
  const res = await fetch(panel.dataset.src);
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const header = plyHeader(bytes);
  panel.dataset.vertices = header.splats;
  const renderer = new THREE.WebGLRenderer({ antialias: false });
  renderer.setClearColor(0x000000, 0);
  const camera = new THREE.PerspectiveCamera(45, 1, 0.05, 100);
  const view = { renderer, camera, controls: null, viewer: null, resize: null };
  try {
    renderer.domElement.className = "splat-canvas";
    panel.prepend(renderer.domElement);
    camera.position.set(0, 2.9 * Math.sin(Math.PI / 12), 2.9 * Math.cos(Math.PI / 12));
    camera.lookAt(0, 0, 0);
    view.controls = new GS.OrbitControls(camera, renderer.domElement);  // no key handlers: many panels share a page
    view.resize = new ResizeObserver(() => {
      renderer.setSize(panel.clientWidth, panel.clientHeight, false);
      camera.aspect = panel.clientWidth / Math.max(panel.clientHeight, 1);
      // a panel narrower than tall keeps the 45-degree field across (the object's width stays in view)
      camera.fov = camera.aspect < 1 ? 2 * Math.atan(Math.tan(Math.PI / 8) / camera.aspect) * 180 / Math.PI : 45;
      camera.updateProjectionMatrix();
      view.viewer?.forceRenderNextFrame();
    });
    view.resize.observe(panel);
    view.viewer = new GS.Viewer({
      renderer, camera, rootElement: panel, useBuiltInControls: false, selfDrivenMode: true,
      sharedMemoryForWorkers: false, gpuAcceleratedSort: false,  // a static host sends no COOP/COEP headers
      renderMode: GS.RenderMode.OnChange, sceneRevealMode: GS.SceneRevealMode.Instant,
      sphericalHarmonicsDegree: header.degree, logLevel: GS.LogLevel.None,
    });
    const url = URL.createObjectURL(new Blob([bytes]));
    try {
      await Promise.race([
        view.viewer.addSplatScene(url, { format: GS.SceneFormat.Ply, showLoadingUI: false, progressiveLoad: false }),
        new Promise((_, reject) => setTimeout(() => reject(new Error("timed out")), 60000))]);
    } finally {
      URL.revokeObjectURL(url);
    }
    view.viewer.start();  // renders when the camera moves (RenderMode.OnChange)
    panel.dataset.splats = view.viewer.getSplatMesh().getSplatCount();
    return view;
  } catch (err) {
    await close(view);
    throw err;
  }
}

async function close(view) {
  view.resize?.disconnect();
  view.controls?.dispose();
  try { await view.viewer?.dispose(); } catch (err) { /* released below either way */ }
  view.renderer.dispose();
  view.renderer.forceContextLoss();
  view.renderer.domElement.remove();
}

// One panel at a time through open/close; `want` follows the panel's visibility.
async function sync(panel, state) {
  if (state.busy) return;
  state.busy = true;
  const label = panel.querySelector(".splat-state");
  while (state.want !== (state.view !== null) && panel.dataset.state !== "error") {
    try {
      if (state.want) {
        panel.dataset.state = "loading";
        label.textContent = "loading splats";
        state.view = await open(panel);
        panel.dataset.state = "shown";
        label.textContent = `${Number(panel.dataset.splats).toLocaleString("en")} splats`;
      } else {
        const view = state.view;
        state.view = null;
        await close(view);
        panel.dataset.state = "idle";
        label.textContent = "Gaussian splats";
      }
    } catch (err) {
      panel.dataset.state = "error";
      label.textContent = `splats not shown: ${err.message}`;
    }
  }
  state.busy = false;
}

const states = new Map();
const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const state = states.get(entry.target);
    state.want = entry.isIntersecting;
    sync(entry.target, state);
  }
}, { rootMargin: "200px" });
for (const panel of document.querySelectorAll(".splats[data-src]")) {
  states.set(panel, { want: false, view: null, busy: false });
  observer.observe(panel);
}
"""


def find_splat_viewer() -> dict[str, Path] | None:
    """File name next to the page -> the installed file, from $DREAM3D_NODE_MODULES (a node_modules
    folder holding @mkkellogg/gaussian-splats-3d and three), else the repository's; None if any is missing."""
    env = os.environ.get("DREAM3D_NODE_MODULES")
    for root in ([Path(env)] if env else []) + [NODE_MODULES]:
        files = {name: root / rel for name, rel in FILES.items()}
        if all(p.is_file() for p in files.values()):
            return files
    return None
