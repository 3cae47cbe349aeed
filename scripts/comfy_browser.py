"""Shared by the browser scripts: open a running ComfyUI in headless Chromium and drive its real frontend.

Not part of the test suite (CI has neither ComfyUI nor Chromium). Needs Python Playwright
(`pip install playwright`) and a Chromium binary; nothing is downloaded: pass --chromium if it is not
/usr/bin/chromium. Starts no server: ComfyUI (with this pack in custom_nodes/) must already be running.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

VUE_NODES = "Comfy.VueNodes.Enabled"

# Helpers installed in the page. `__rc.queue()` presses Queue the way the UI does and resolves when that run
# ends, with the texts this pack's node showed under itself.
PAGE_HELPERS = r"""
() => {
  const api = window.comfyAPI.api.api;
  const texts = [];
  // what the node sent; not the final line the pack's extension shows again after the run (runcomfy_kept)
  api.addEventListener("progress_text", (e) => { if (!e.detail?.runcomfy_kept) texts.push(e.detail); });
  window.__rc = {
    texts,
    ours: () => app.graph.nodes.filter((n) => n.type === "RunComfySeedream4EditSequential"),
    // a new node of `type` placed at [x, y] in the graph, and a widget value set by name
    add: (type, x, y) => {
      const node = LiteGraph.createNode(type);
      node.pos = [x, y];
      app.graph.add(node);
      return node;
    },
    set: (node, name, value) => { node.widgets.find((w) => w.name === name).value = value; },
    sockets: (node) => node.inputs
      .filter((i) => /^image_\d+$/.test(i.name))
      .map((i) => i.name + (i.link != null ? "*" : "")),
    // every link into a node targets the index of the input that owns it, and names the same link id
    linksConsistent: () => {
      const problems = [];
      for (const node of app.graph.nodes) {
        for (const [index, input] of (node.inputs ?? []).entries()) {
          if (input.link == null) continue;
          const link = app.graph.links.get(input.link);
          if (!link) problems.push(`${node.id}.${input.name}: link ${input.link} missing`);
          else if (link.target_id !== node.id || link.target_slot !== index)
            problems.push(`${node.id}.${input.name}: link ${input.link} targets ` +
              `${link.target_id}/${link.target_slot}, input is at ${index}`);
        }
      }
      for (const link of app.graph.links.values()) {
        const target = app.graph.getNodeById(link.target_id);
        if (target?.inputs?.[link.target_slot]?.link !== link.id)
          problems.push(`link ${link.id} -> ${link.target_id}/${link.target_slot} is not owned by that input`);
      }
      return problems;
    },
    // Nodes 2.0 (Comfy.VueNodes.Enabled): the nodes are DOM elements, each slot a dot with data-slot-key.
    vueNodes: () => !!app.extensionManager?.setting?.get("Comfy.VueNodes.Enabled"),
    nodeElement: (node) => document.querySelector(`[data-node-id="${node.id}"]`),
    // The image sockets a Nodes 2.0 node shows, in the order shown (null with classic nodes).
    shownSockets: (node) => {
      if (!__rc.vueNodes()) return null;
      const element = __rc.nodeElement(node);
      if (!element) return [];
      return [...element.querySelectorAll(".lg-slot--input")]
        .map((slot) => slot.textContent.trim())
        .filter((name) => /^image_\d+$/.test(name));
    },
    describe: (element) => {
      if (!element) return "nothing";
      const classes = (element.getAttribute("class") ?? "").trim().split(/\s+/).filter(Boolean);
      return [element.tagName, ...classes.slice(0, 3)].join(".");
    },
    // Move the canvas (same zoom) so these nodes sit in the middle of it, away from the bars drawn over its edges.
    centre: async (nodes) => {
      const title = LiteGraph.NODE_TITLE_HEIGHT ?? 30;
      const left = Math.min(...nodes.map((n) => n.pos[0])), right = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
      const top = Math.min(...nodes.map((n) => n.pos[1] - title)), bottom = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
      const rect = app.canvas.canvas.getBoundingClientRect();
      const ds = app.canvas.ds;
      ds.offset = [rect.width / 2 / ds.scale - (left + right) / 2, rect.height / 2 / ds.scale - (top + bottom) / 2];
      app.canvas.setDirty(true, true);
      for (let i = 0; i < 3; i++) await new Promise((r) => requestAnimationFrame(r));
    },
    // Where on the screen a person would press to grab this slot, and whether that is what is under the point:
    // the canvas with classic nodes (LiteGraph finds the slot), the slot's own element in Nodes 2.0.
    slotPoint: (node, isInput, index) => {
      let x, y;
      if (__rc.vueNodes()) {
        const key = `${node.id}-${isInput ? "in" : "out"}-${index}`;
        const dot = __rc.nodeElement(node)?.querySelector(`[data-slot-key="${key}"]`);
        if (!dot) return { x: null, y: null, ok: false, under: `no element with data-slot-key ${key}` };
        const r = dot.getBoundingClientRect();
        [x, y] = [r.left + r.width / 2, r.top + r.height / 2];
        const under = document.elementFromPoint(x, y);
        const reached = !!under && under.closest(".lg-slot") === dot.closest(".lg-slot");
        return { x, y, ok: reached, under: __rc.describe(under), expected: "slot " + key };
      }
      const rect = app.canvas.canvas.getBoundingClientRect();
      const c = app.canvas.ds.convertOffsetToCanvas(node.getConnectionPos(isInput, index));
      [x, y] = [rect.left + c[0], rect.top + c[1]];
      const under = document.elementFromPoint(x, y);
      return { x, y, ok: under === app.canvas.canvas, under: __rc.describe(under), expected: "the canvas" };
    },
    queue: (timeoutMs = 180000) => new Promise((resolve) => {
      const start = texts.length;
      let timer = null;
      const finish = (kind, detail) => {
        clearTimeout(timer);
        for (const name of Object.keys(handlers)) api.removeEventListener(name, handlers[name]);
        resolve({ kind, detail: detail ?? null, texts: texts.slice(start) });
      };
      const handlers = {
        execution_success: (e) => finish("success", e.detail),
        execution_error: (e) => finish("error", e.detail),
        execution_interrupted: (e) => finish("interrupted", e.detail),
      };
      for (const [name, handler] of Object.entries(handlers)) api.addEventListener(name, handler);
      timer = setTimeout(() => finish("timeout"), timeoutMs);
      Promise.resolve(app.queuePrompt(0, 1)).then(() => {
        const errors = app.lastNodeErrors;
        if (errors && Object.keys(errors).length) finish("rejected", errors);
      });
    }),
  };
}
"""


READY = "window.app && window.app.graph && window.LiteGraph && window.comfyAPI"


def reload_page(page: Any, settle_ms: int = 3000) -> None:
    """Reload the page as a person pressing F5 would (the workflow comes back from the browser's storage), wait
    for the frontend and install `window.__rc` again."""
    page.reload()
    page.wait_for_function(READY, timeout=60_000)
    page.wait_for_timeout(settle_ms)
    page.evaluate(PAGE_HELPERS)


def screenshot_node(page: Any, node_id: int, path: str, margin: int = 40) -> None:
    """Save a picture of one node at zoom 1, moved to the middle of the canvas (clear of the bars a newer frontend
    draws over the canvas's edges), with `margin` pixels around it; the mouse is moved away so no hover shows."""
    page.mouse.move(5, 500)
    box = page.evaluate(
        """async ([id, margin]) => {
          const node = app.graph.getNodeById(id);
          app.canvas.ds.scale = 1;
          await __rc.centre([node]);
          const element = __rc.vueNodes() ? __rc.nodeElement(node) : null;
          if (element) {
            const r = element.getBoundingClientRect();
            return [r.left - margin, r.top - margin, r.width + 2 * margin, r.height + 2 * margin];
          }
          const title = LiteGraph.NODE_TITLE_HEIGHT;
          const rect = app.canvas.canvas.getBoundingClientRect();
          const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
          return [rect.left + x - margin, rect.top + y - margin, node.size[0] + 2 * margin, node.size[1] + title + 2 * margin];
        }""",
        [node_id, margin],
    )
    page.wait_for_timeout(300)
    page.screenshot(path=path, clip={"x": box[0], "y": box[1], "width": box[2], "height": box[3]})


@contextlib.contextmanager
def comfy_page(
    url: str,
    chromium: str = "/usr/bin/chromium",
    viewport: tuple[int, int] = (1600, 1000),
    vue_nodes: bool | None = None,
) -> Iterator[Any]:
    """A page with ComfyUI loaded, the first-run template dialog closed and `window.__rc` installed.

    vue_nodes True or False turns the Nodes 2.0 design (setting Comfy.VueNodes.Enabled) on or off for the
    session and puts the setting back as it was afterwards; None leaves it as the server has it. Raises
    RuntimeError if the frontend does not know the setting.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="comfy-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        restore = None
        try:
            page = context.new_page()
            ready = READY
            page.goto(url)
            page.wait_for_function(ready, timeout=60_000)
            page.evaluate(
                "async () => { const s = app.extensionManager?.setting; if (s) { await s.set('Comfy.TutorialCompleted', true); } }"
            )
            if vue_nodes is not None:
                before = page.evaluate(f"() => app.extensionManager?.setting?.get({VUE_NODES!r}) ?? null")
                if before is None:
                    raise RuntimeError(f"this frontend has no setting {VUE_NODES}")
                if before != vue_nodes:
                    page.evaluate(f"async (on) => {{ await app.extensionManager.setting.set({VUE_NODES!r}, on); }}", vue_nodes)
                    restore = before
                    page.reload()  # start from a page that was drawn with that design from the first frame
                    page.wait_for_function(ready, timeout=60_000)
            page.wait_for_timeout(1500)
            page.keyboard.press("Escape")  # the "Get started with a template" dialog of a first visit
            page.evaluate(PAGE_HELPERS)
            yield page
        finally:
            if restore is not None:
                with contextlib.suppress(Exception):
                    page.evaluate(f"async (on) => {{ await app.extensionManager.setting.set({VUE_NODES!r}, on); }}", restore)
            context.close()
