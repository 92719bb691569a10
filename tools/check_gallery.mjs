// Open a dream3d gallery page in headless Chromium and report what a person would see.
//
//   npm ci --prefix tools/node                    (playwright-core, once)
//   node tools/check_gallery.mjs http://127.0.0.1:8000/index.html shot.png
//
// Prints one JSON object: console errors, failed requests, each <video>'s decoded
// state, each <model-viewer>'s load state, each Gaussian-splat panel's state and
// splat count (with a screenshot of the panel, SHOT-splats-N.png), and the
// screenshot's path. Exit code 0 when there is no console error, every video
// decodes and every 3D view (mesh and splats) loaded; 1 otherwise; 2 when the
// browser could not be started or the page not opened.
// The browser is Debian's chromium (CHROMIUM overrides the path); playwright-core
// downloads no browser of its own.
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "node", "package.json"));

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node tools/check_gallery.mjs URL SCREENSHOT.png");
  process.exit(2);
}
const timeoutMs = Number(process.env.GALLERY_TIMEOUT_MS || 60000);

let chromium;
try {
  ({ chromium } = require("playwright-core"));
} catch (err) {
  console.error("playwright-core is not installed: run `npm ci --prefix tools/node`");
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), "dream3d-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // WebGL on the CPU: without a GPU, Chromium only offers SwiftShader when asked.
      "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
    ],
  });
} catch (err) {
  console.error(`cannot start chromium: ${err.message.split("\n")[0]}`);
  rmSync(profile, { recursive: true, force: true });
  process.exit(2);
}

const consoleErrors = [];
const failedRequests = [];
const page = context.pages()[0] || (await context.newPage());
page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
page.on("pageerror", (err) => consoleErrors.push(`uncaught: ${err.message}`));
page.on("requestfailed", (req) => failedRequests.push(`${req.url()}: ${req.failure()?.errorText}`));
page.on("response", (res) => { if (res.status() >= 400) failedRequests.push(`${res.url()}: HTTP ${res.status()}`); });

const report = { url, screenshot, consoleErrors, failedRequests, videos: [], viewers: [], splats: [], images: [] };
try {
  await page.goto(url, { waitUntil: "load", timeout: timeoutMs });
  report.title = await page.title();
  report.runs = await page.locator("article.run").count();
  report.modelViewerDefined = await page.evaluate(async () => {
    if (!document.querySelector("script[type=module]")) return false;
    await Promise.race([customElements.whenDefined("model-viewer"), new Promise((r) => setTimeout(r, 20000))]);
    return customElements.get("model-viewer") !== undefined;
  });

  // Each 3D view, scrolled into sight (model-viewer loads lazily), until it loads or fails.
  const viewers = await page.locator("model-viewer").all();
  for (const viewer of viewers) {
    await viewer.scrollIntoViewIfNeeded();
    report.viewers.push(await viewer.evaluate((el, ms) => new Promise((resolve) => {
      const done = (error) => resolve({ src: el.getAttribute("src"), loaded: el.loaded === true, error });
      if (el.loaded) return done(null);
      const timer = setTimeout(() => done("timed out"), ms);
      el.addEventListener("load", () => { clearTimeout(timer); done(null); }, { once: true });
      el.addEventListener("error", (e) => { clearTimeout(timer); done(String(e.detail?.type || "error")); }, { once: true });
    }), timeoutMs));
  }

  // Each splat panel, scrolled into sight (it loads when visible), until it shows its splats or says why not.
  const panels = await page.locator(".splats[data-src]").all();
  for (const [i, panel] of panels.entries()) {
    await panel.scrollIntoViewIfNeeded();
    const state = await panel.evaluate((el, ms) => new Promise((resolve) => {
      const t0 = performance.now();
      const poll = () => {
        const s = el.dataset.state;
        if (s === "shown" || s === "error" || performance.now() - t0 > ms) {
          return resolve({ src: el.dataset.src, state: s || "timed out", splats: Number(el.dataset.splats ?? -1),
                           vertices: Number(el.dataset.vertices ?? -1), label: el.querySelector(".splat-state")?.textContent });
        }
        setTimeout(poll, 100);
      };
      poll();
    }), timeoutMs);
    if (state.state === "shown") {
      await page.waitForTimeout(300);  // a few frames after the scene is in
      state.shot = screenshot.replace(/\.png$/, "") + `-splats-${i}.png`;
      await panel.screenshot({ path: state.shot });
    }
    report.splats.push(state);
  }

  // Each video: its metadata decoded (or its error), then whether frames have a size.
  report.videos = await page.evaluate((ms) => Promise.all([...document.querySelectorAll("video")].map((v) =>
    new Promise((resolve) => {
      const done = () => resolve({
        src: v.currentSrc, readyState: v.readyState, width: v.videoWidth, height: v.videoHeight,
        error: v.error ? `${v.error.code} ${v.error.message}` : null,
      });
      if (v.readyState >= 1 || v.error) return done();
      const timer = setTimeout(done, ms);
      v.addEventListener("loadedmetadata", () => { clearTimeout(timer); done(); }, { once: true });
      v.addEventListener("error", () => { clearTimeout(timer); done(); }, { once: true, capture: true });
    }))), timeoutMs);
  // A video replaced by its GIF (nothing could decode it) counts as a failure here.
  report.gifFallbacks = await page.locator("img.turntable").count();
  report.images = await page.evaluate(() => [...document.images].map((img) => ({
    src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth,
  })));

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.waitForTimeout(500);
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (err) {
  report.fatal = err.message.split("\n")[0];
}
await context.close();
rmSync(profile, { recursive: true, force: true });

report.ok = !report.fatal && consoleErrors.length === 0 && failedRequests.length === 0
  && report.videos.every((v) => v.readyState >= 1 && v.width > 0 && v.error === null)
  && report.viewers.every((m) => m.loaded && m.error === null)
  && report.splats.every((s) => s.state === "shown" && s.splats > 0)
  && report.images.every((i) => i.complete && i.width > 0);
console.log(JSON.stringify(report, null, 2));
process.exit(report.fatal ? 2 : report.ok ? 0 : 1);
