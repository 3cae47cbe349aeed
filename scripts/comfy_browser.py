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

# Helpers installed in the page. `__rc.queue()` presses Queue the way the UI does and resolves when that run
# ends, with the texts this pack's node showed under itself.
PAGE_HELPERS = r"""
() => {
  const api = window.comfyAPI.api.api;
  const texts = [];
  api.addEventListener("progress_text", (e) => texts.push(e.detail));
  window.__rc = {
    texts,
    ours: () => app.graph.nodes.filter((n) => n.type === "RunComfySeedream4EditSequential"),
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


@contextlib.contextmanager
def comfy_page(url: str, chromium: str = "/usr/bin/chromium", viewport: tuple[int, int] = (1600, 1000)) -> Iterator[Any]:
    """A page with ComfyUI loaded, the first-run template dialog closed and `window.__rc` installed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="comfy-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            page = context.new_page()
            page.goto(url)
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph && window.comfyAPI", timeout=60_000)
            page.evaluate(
                "async () => { const s = app.extensionManager?.setting; if (s) { await s.set('Comfy.TutorialCompleted', true); } }"
            )
            page.wait_for_timeout(1500)
            page.keyboard.press("Escape")  # the "Get started with a template" dialog of a first visit
            page.evaluate(PAGE_HELPERS)
            yield page
        finally:
            context.close()
