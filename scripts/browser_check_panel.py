"""Check the "RunComfy jobs" sidebar tab and the spending-limit setting in a real ComfyUI frontend (headless Chromium).

Not part of the pytest suite: it needs a running ComfyUI with this pack in custom_nodes/, Chromium and
Python Playwright. It starts nothing itself. To run it against the local fake service (no token, no cost), with a
queue slow enough to see each state of a job:

    python scripts/fake_service.py --port 8775 --queue-seconds 6 --run-seconds 3 --output-scale 0.25
    RUNCOMFY_MODEL_API_BASE=http://127.0.0.1:8775/v1 RUNCOMFY_SERVERLESS_API_BASE=http://127.0.0.1:8775/prod/v2 \
        RUNCOMFY_API_TOKEN=fake-runcomfy-token python main.py --cpu --port 8195          # in ComfyUI; its input/ must hold example.png
    python scripts/browser_check_panel.py http://127.0.0.1:8195 [--vue-nodes] [--screenshot docs/images/jobs_panel.png]

It runs with the classic node design, or with --vue-nodes in "Nodes 2.0" (setting Comfy.VueNodes.Enabled); either
way it sets the setting for its session and puts it back afterwards.

Steps (each prints what the panel shows): open the jobs tab from the sidebar; see the balance beside today's total
with the time it was read (and "unknown" when the server answers none); queue a graph with the Seedream node (a new
seed, so a new job) and follow its row from queued through generating to done, with its thumbnail loaded and its
cost, and the balance lowered by it; copy its request id with the Copy button (through the clipboard API, then
through the fallback used where that API is refused); queue another, press its Cancel button while it is queued, and
see the server's message in the row, the row cancelled and the node's run end as cancelled; reload the page, open
the tab again and see the same request ids with the same states; optionally save a screenshot of the panel; count
the panel's requests while it is shown (one every 2 s), with another sidebar tab shown and with the sidebar closed
(none); then in Settings → RunComfy → Spending limit, check the two inputs show what the server holds (an input
whose limit an environment variable sets is disabled and names the variable), save a limit per run and per day, see
the jobs panel show them, refuse a negative amount, clear both (or, when variables set both, see Save disabled), and
put back what was saved before. Exits 1 if any step sees something else.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from comfy_browser import PAGE_HELPERS, comfy_page

TAB_BUTTON = '.runcomfy-jobs-tab-button, [data-testid="runcomfy-jobs-tab-button"]'  # 1.27: a class; 1.58: a test id
NODE_LIBRARY_BUTTON = '.node-library-tab-button, [data-testid="node-library-tab-button"]'
ENDED = ("done", "failed", "cancelled", "unknown")
FIELDS = ("per_run_usd", "per_day_usd")
INPUTS = {"per_run_usd": ".runcomfy-spending-per-run", "per_day_usd": ".runcomfy-spending-per-day"}

# What the panel shows, read from its DOM only (the stable class names and data attributes).
PANEL_HELPERS = r"""
() => {
  const text = (root, selector) => root.querySelector(selector)?.textContent.trim() ?? null;
  const visible = (element) => !!element && !element.hidden && element.getClientRects().length > 0;
  window.__panel = {
    shown: () => visible(document.querySelector(".runcomfy-jobs")),
    head: () => ({
      totals: text(document, ".runcomfy-jobs-totals"),
      balance: text(document, ".runcomfy-jobs-balance"),
      // beside today's total: in the same row, on its line unless the panel is too narrow
      balanceBeside: (() => {
        const totals = document.querySelector(".runcomfy-jobs-totals"), balance = document.querySelector(".runcomfy-jobs-balance");
        if (!visible(totals) || !visible(balance) || totals.parentElement !== balance.parentElement) return false;
        const a = totals.getBoundingClientRect(), b = balance.getBoundingClientRect();
        return b.top < a.bottom || b.top - a.bottom < 4;
      })(),
      limits: text(document, ".runcomfy-jobs-limits"),
      warning: visible(document.querySelector(".runcomfy-jobs-warning")) ? text(document, ".runcomfy-jobs-warning") : null,
      error: visible(document.querySelector(".runcomfy-jobs-error")) ? text(document, ".runcomfy-jobs-error") : null,
    }),
    rows: () => [...document.querySelectorAll(".runcomfy-jobs .runcomfy-job")].map((row) => {
      const img = row.querySelector("img");
      return {
        entry: row.dataset.entry,
        request_id: row.dataset.requestId || null,
        status: row.dataset.status,
        state: text(row, ".runcomfy-job-state"),
        cost: text(row, ".runcomfy-job-cost"),
        prompt: text(row, ".runcomfy-job-prompt"),
        cancel: visible(row.querySelector(".runcomfy-job-cancel")),
        copy: visible(row.querySelector(".runcomfy-job-copy")),
        message: text(row, ".runcomfy-job-message") || null,
        detail: text(row, ".runcomfy-job-detail") || null,
        thumbnail: img?.getAttribute("src")
          ? { loaded: img.complete && img.naturalWidth > 0, width: img.naturalWidth, height: img.naturalHeight }
          : null,
      };
    }),
    row: (entry) => __panel.rows().find((r) => r.entry === entry) ?? null,
    spending: async () => (await (await window.comfyAPI.api.api.fetchApi("/runcomfy/seedream/spending")).json()),
    jobs: async () => (await (await window.comfyAPI.api.api.fetchApi("/runcomfy/seedream/jobs", { cache: "no-store" })).json()),
    setSpending: async (body) => (await (await window.comfyAPI.api.api.fetchApi("/runcomfy/seedream/spending", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })).json()),
  };
}
"""

GRAPH = r"""
([seed, prompt]) => {
  app.graph.clear();
  const load = __rc.add('LoadImage', 40, 80);
  const ours = __rc.add('RunComfySeedream4EditSequential', 420, 80);
  const preview = __rc.add('PreviewImage', 900, 80);
  __rc.set(load, 'image', 'example.png');
  load.connect(0, ours, ours.inputs.findIndex((i) => i.name === 'image_1'));
  ours.connect(0, preview, 0);
  __rc.set(ours, 'prompt', prompt);
  __rc.set(ours, 'max_images', 2);
  __rc.set(ours, 'seed', seed);
  const control = ours.widgets.find((w) => w.name === 'control_after_generate');
  if (control) control.value = 'fixed';
  app.canvas.setDirty(true, true);
}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the running ComfyUI, e.g. http://127.0.0.1:8195")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--json", help="also write everything seen to this file")
    parser.add_argument("--screenshot", help="save a screenshot of the jobs panel (after the reload) to this PNG")
    parser.add_argument("--vue-nodes", action="store_true", help='run in "Nodes 2.0" (Comfy.VueNodes.Enabled = true)')
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a job to end")
    args = parser.parse_args(argv)

    record: dict = {"steps": []}
    failures: list[str] = []

    def report(name: str, ok: bool, seen: object, *details: str) -> None:
        record["steps"].append({"step": name, "ok": ok, "seen": seen})
        print(f"{'ok ' if ok else 'BAD'} {name}: {seen}")
        for line in details:
            print(f"    {line}")
        if not ok:
            failures.append(name)

    with comfy_page(args.url, args.chromium, vue_nodes=args.vue_nodes) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        frontend = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")
        design = "Nodes 2.0" if page.evaluate("() => __rc.vueNodes()") else "classic nodes"
        record["frontend"], record["design"] = frontend, design
        print(f"frontend {frontend}, {design}")
        page.evaluate(PANEL_HELPERS)

        def open_tab(name: str) -> bool:
            has_api = page.evaluate("() => typeof app.extensionManager?.registerSidebarTab === 'function'")
            if not page.evaluate("() => __panel.shown()"):
                button = page.locator(TAB_BUTTON)
                if button.count() == 0:
                    report(name, False, "no sidebar button", f"registerSidebarTab in this frontend: {has_api}")
                    return False
                button.first.click()
            try:
                page.wait_for_function("() => __panel.shown() && !['Loading…', null].includes(__panel.head().totals)", timeout=10_000)
            except Exception:  # noqa: BLE001 - reported below with what the page shows
                pass
            head, rows = page.evaluate("() => [__panel.head(), __panel.rows()]")
            ok = page.evaluate("() => __panel.shown()") and head["error"] is None
            report(
                name,
                ok,
                head["totals"],
                f"limits: {head['limits']}",
                f"warning: {head['warning']}",
                f"error: {head['error']}",
                f"{len(rows)} rows listed",
            )
            return ok

        def follow(entry_before: set[str], run: str, until: tuple[str, ...], on_row=None) -> tuple[dict | None, list[str]]:
            """Watch the panel until a row not in `entry_before` reaches a state in `until` and the run `run` ended.
            `on_row(row)` is called on every look and may act (press Cancel); returns the last row and the states seen."""
            states: list[str] = []
            row = None
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                rows = page.evaluate("() => __panel.rows()")
                fresh = [r for r in rows if r["entry"] not in entry_before]
                if fresh:
                    row = fresh[0]
                    if not states or states[-1] != row["state"]:
                        states.append(row["state"])
                        print(
                            f"    {time.strftime('%H:%M:%S')} {row['request_id'] or '(no request id yet)'}: {row['state']}  {row['cost']}"
                        )
                    if on_row is not None:
                        on_row(row)
                ended = page.evaluate(f"() => window.{run}_result !== undefined")
                if row is not None and row["status"] in until and ended:
                    break
                page.wait_for_timeout(200)
            return row, states

        def queue(run: str, seed: int, prompt: str) -> set[str]:
            page.evaluate(GRAPH, [seed, prompt])
            before = {r["entry"] for r in page.evaluate("() => __panel.rows()")}
            page.evaluate(f"() => {{ window.{run}_result = undefined; __rc.queue().then((r) => {{ window.{run}_result = r; }}); }}")
            return before

        def in_order(seen: list[str], wanted: list[str]) -> bool:
            it = iter(seen)
            return all(any(status == want for status in it) for want in wanted)

        if not open_tab("open the jobs tab"):
            print("FAILED: the jobs tab did not open")
            return 1

        def balance_shown(name: str) -> float | None:
            """The balance beside today's total is the server's, with the time it was read; returns it (None: unknown)."""
            page.wait_for_timeout(2500)  # one more poll
            answer = page.evaluate("() => __panel.jobs()").get("balance") or {}
            head = page.evaluate("() => __panel.head()")
            usd = answer.get("usd")
            want = f"Balance: ${usd:.2f} (read " if usd is not None else "Balance: unknown"
            shown = head.get("balance") or ""
            ok = shown.startswith(want) and head.get("balanceBeside") and (usd is None or shown.endswith(")"))
            report(
                name, bool(ok), shown, f"the server: {answer}", f"beside today's total ({head['totals']!r}): {head.get('balanceBeside')}"
            )
            return usd

        # 0. the balance, beside today's total; "unknown" when the server cannot read it
        balance_before = balance_shown("the balance shows beside today's total, with the time it was read")

        def unknown_balance(route) -> None:
            response = route.fetch()
            body = response.json()
            body["balance"] = {"usd": None, "read_at": None, "problem": "RunComfy answered HTTP 503"}
            route.fulfill(response=response, json=body)

        page.route("**/runcomfy/seedream/jobs", unknown_balance)
        try:
            page.wait_for_function("() => __panel.head().balance === 'Balance: unknown'", timeout=6_000)
        except Exception:  # noqa: BLE001 - reported below with what the page shows
            pass
        title = page.evaluate("() => document.querySelector('.runcomfy-jobs-balance')?.title")
        shown = page.evaluate("() => __panel.head().balance")
        report("a balance the server cannot read shows as unknown", shown == "Balance: unknown", shown, f"its tooltip: {title!r}")
        page.unroute("**/runcomfy/seedream/jobs", unknown_balance)

        # 1. a job followed from queued to done
        before = queue("__run1", random.randrange(1, 2**31 - 1), "Generate 2 images of this scene, one at noon and one at night.")
        statuses: list[str] = []
        row, states = follow(before, "__run1", ENDED, on_row=lambda r: statuses.append(r["status"]))
        if row is not None and row["status"] == "done" and not (row["thumbnail"] or {}).get("loaded"):
            page.wait_for_function("(entry) => __panel.row(entry)?.thumbnail?.loaded", arg=row["entry"], timeout=8_000)
            row = page.evaluate("(entry) => __panel.row(entry)", row["entry"])
        run1 = page.evaluate("() => window.__run1_result ?? null")
        record["run1"] = {"row": row, "states": states, "run": run1}
        seen_statuses = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
        thumb = (row or {}).get("thumbnail") or {}
        ok = (
            row is not None
            and in_order(seen_statuses, ["queued", "generating", "done"])
            and bool(thumb.get("loaded"))
            and max(thumb.get("width", 0), thumb.get("height", 0)) <= 128
            and (run1 or {}).get("kind") == "success"
        )
        report(
            "a queued job goes queued -> generating -> done",
            ok,
            " -> ".join(seen_statuses),
            f"request id {(row or {}).get('request_id')}, cost {(row or {}).get('cost')!r}, thumbnail {thumb}",
            f"the run ended: {(run1 or {}).get('kind')}",
        )
        done_row = row
        head = page.evaluate("() => __panel.head()")
        print(f"    totals now: {head['totals']}")
        balance_after = balance_shown("the balance after the job, beside today's total")
        if balance_before is not None and balance_after is not None:
            lowered = balance_before - balance_after
            report("the job lowered the balance shown by its price", lowered > 0.005, f"${balance_before:.2f} -> ${balance_after:.2f}")

        # 2. Copy: the clipboard API, then the fallback (a selected textarea) where that API refuses
        if done_row and done_row.get("request_id"):
            rid = done_row["request_id"]
            copy = page.locator(f'.runcomfy-job[data-entry="{done_row["entry"]}"] .runcomfy-job-copy')
            page.evaluate("() => navigator.clipboard.writeText('before')")
            copy.click()
            page.wait_for_timeout(300)
            label, pasted = copy.inner_text(), page.evaluate("() => navigator.clipboard.readText()")
            report(
                "Copy puts the request id on the clipboard", pasted == rid and label == "Copied", repr(pasted), f"the button says {label!r}"
            )
            page.evaluate(
                """() => { navigator.clipboard.writeText('before');
                   window.__writeText = navigator.clipboard.writeText;
                   navigator.clipboard.writeText = () => Promise.reject(new DOMException('refused', 'NotAllowedError')); }"""
            )
            page.wait_for_timeout(1700)  # the button's "Copied" goes back to "Copy"
            copy.click()
            page.wait_for_timeout(300)
            label = copy.inner_text()
            page.evaluate("() => { navigator.clipboard.writeText = window.__writeText; }")
            pasted = page.evaluate("() => navigator.clipboard.readText()")
            report(
                "Copy falls back to a selected text when the clipboard API refuses",
                pasted == rid and label == "Copied",
                repr(pasted),
                f"the button says {label!r}",
            )

        # 3. a job cancelled from the panel while queued
        pressed: dict = {}

        def press_cancel(row: dict) -> None:
            if not pressed and row["status"] == "queued" and row["cancel"]:
                pressed.update(row)
                print(f"    pressing Cancel on {row['request_id']} ({row['state']})")
                page.locator(f'.runcomfy-job[data-entry="{row["entry"]}"] .runcomfy-job-cancel').click()

        before = queue("__run2", random.randrange(1, 2**31 - 1), "Generate 2 images of this scene in winter, at dusk.")
        row, states = follow(before, "__run2", ENDED, on_row=press_cancel)
        if row is not None:
            try:
                page.wait_for_function(
                    "(entry) => { const m = __panel.row(entry)?.message; return m && m !== 'Cancelling…'; }",
                    arg=row["entry"],
                    timeout=5_000,
                )
            except Exception:  # noqa: BLE001 - reported below
                pass
            row = page.evaluate("(entry) => __panel.row(entry)", row["entry"])
        run2 = page.evaluate("() => window.__run2_result ?? null") or {}
        said = [t["text"] for t in run2.get("texts", [])]
        error = (run2.get("detail") or {}).get("exception_message", "") if run2.get("kind") == "error" else ""
        node_ended = run2.get("kind") in ("error", "interrupted") and any("cancel" in t.lower() for t in [error, *said[-1:]])
        record["run2"] = {"row": row, "states": states, "run": run2, "pressed": pressed}
        ok = bool(pressed) and row is not None and row["status"] == "cancelled" and bool(row["message"]) and node_ended
        report(
            "Cancel from the panel while queued",
            ok,
            " -> ".join(states),
            f"message in the row: {(row or {}).get('message')!r}",
            f"the run ended: {run2.get('kind')}; error: {error.strip()[:300]!r}",
            f"the node showed last: {said[-1] if said else None!r}",
        )
        cancelled_row = row

        # 4. the same rows after a reload
        wanted = {r["request_id"]: r["status"] for r in (done_row, cancelled_row) if r and r.get("request_id")}
        page.reload()
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph && window.comfyAPI", timeout=60_000)
        page.wait_for_timeout(1500)
        page.evaluate(PAGE_HELPERS)
        page.evaluate(PANEL_HELPERS)
        if open_tab("open the jobs tab again after a reload"):
            page.wait_for_timeout(2500)  # one more poll
            after = {r["request_id"]: r["status"] for r in page.evaluate("() => __panel.rows()") if r["request_id"] in wanted}
            thumb = (page.evaluate("(entry) => __panel.row(entry)", done_row["entry"]) or {}).get("thumbnail") if done_row else None
            report(
                "the same rows after the reload",
                bool(wanted) and after == wanted,
                after,
                f"before the reload: {wanted}",
                f"thumbnail of the done job: {thumb}",
            )
            if args.screenshot:
                page.mouse.move(900, 500)
                box = page.evaluate(
                    """() => { const r = document.querySelector('.runcomfy-jobs').getBoundingClientRect();
                       const rows = [...document.querySelectorAll('.runcomfy-jobs .runcomfy-job')].slice(0, 6);
                       const bottom = rows.length ? rows[rows.length - 1].getBoundingClientRect().bottom : r.bottom;
                       return [r.left, r.top, r.width, Math.min(bottom, r.bottom) - r.top + 8]; }"""
                )
                page.screenshot(path=args.screenshot, clip={"x": box[0], "y": box[1], "width": box[2], "height": box[3]})
                print(f"    screenshot of the panel: {args.screenshot} ({box[2]:.0f}×{box[3]:.0f})")

        # 5. no polling while the tab is not shown: another tab, then the sidebar closed
        polls: list[str] = []

        def count(request) -> None:
            if request.url.split("?")[0].endswith("/runcomfy/seedream/jobs"):
                polls.append(request.url)

        page.on("request", count)
        page.wait_for_timeout(4500)
        report("the shown tab polls every 2 s", len(polls) >= 2, f"{len(polls)} requests in 4.5 s")
        for label, press in (("another sidebar tab", NODE_LIBRARY_BUTTON), ("the sidebar closed", NODE_LIBRARY_BUTTON)):
            page.locator(press).first.click()
            page.wait_for_timeout(500)
            polls.clear()
            page.wait_for_timeout(5000)
            gone = page.evaluate("() => !document.querySelector('.runcomfy-jobs')")
            report(f"no polling with {label}", not polls and gone, f"{len(polls)} requests in 5 s", f"panel removed: {gone}")
        page.remove_listener("request", count)

        # 6. Settings → RunComfy → Spending limit
        def open_setting() -> None:
            page.evaluate("() => app.extensionManager.command.execute('Comfy.ShowSettingsDialog')")
            page.get_by_text("RunComfy", exact=True).first.click(timeout=10_000)  # the category in the dialog's list
            page.wait_for_selector(".runcomfy-spending", timeout=10_000)
            page.wait_for_function("() => document.querySelector('.runcomfy-spending-status')?.textContent !== 'Loading…'")

        def press_save() -> str:
            page.click(".runcomfy-spending-save")  # the status says "Saving…" until the server answers
            page.wait_for_function("() => document.querySelector('.runcomfy-spending-status').textContent !== 'Saving…'")
            return page.inner_text(".runcomfy-spending-status")

        original = page.evaluate("() => __panel.spending()")
        record["spending_before"] = original
        open_setting()
        shown = page.evaluate(
            """() => [...document.querySelectorAll('.runcomfy-spending input')].map((i) => ({
                 value: i.value, disabled: i.disabled,
                 note: i.parentElement.querySelector('.runcomfy-spending-env')?.textContent ?? '' }))"""
        )
        status = page.inner_text(".runcomfy-spending-status")
        env = original.get("env") or {}

        def as_expected(field: str, input_: dict) -> bool:
            """An input shows the limit in effect, disabled and naming its variable, when a variable sets it;
            otherwise the saved value (empty for none), editable, with no note."""
            value = original[field] if env.get(field) else (original.get("saved") or {}).get(field)
            shows = None if input_["value"] == "" else float(input_["value"])
            note_ok = f"set by {env[field]} (wins over this setting)" in input_["note"] if env.get(field) else input_["note"] == ""
            return shows == value and input_["disabled"] == bool(env.get(field)) and note_ok

        ok = bool(original.get("ok")) and all(as_expected(f, i) for f, i in zip(FIELDS, shown, strict=True))
        report(
            "the spending setting shows what the server holds", ok, shown, f"status line: {status!r}", f"the server: {json.dumps(original)}"
        )

        free = [f for f in FIELDS if not env.get(f)]
        held = original
        if not free:
            disabled = page.evaluate("() => document.querySelector('.runcomfy-spending-save').disabled")
            report("Save is disabled: every limit is set by a variable", disabled, f"disabled: {disabled}")
            page.keyboard.press("Escape")
        else:
            values = {"per_run_usd": 1.25, "per_day_usd": 4}
            for field in free:
                page.fill(INPUTS[field], str(values[field]))
            status = press_save()
            held = page.evaluate("() => __panel.spending()")
            kept = all(held["saved"].get(f) == (original.get("saved") or {}).get(f) for f in FIELDS if f not in free)
            ok = status.startswith("Saved") and all(held["saved"].get(f) == values[f] for f in free) and kept
            in_effect = f"in effect per run {held.get('per_run_usd')}, per day {held.get('per_day_usd')}"
            report(
                f"save {', '.join(f'{f} = {values[f]}' for f in free)}",
                ok,
                status,
                f"the server holds: saved {held.get('saved')}, {in_effect}",
            )

            page.fill(INPUTS[free[0]], "-1")
            status = press_save()
            unchanged = page.evaluate("() => __panel.spending()")["saved"] == held["saved"]
            report("a negative amount is refused before saving", "enter an amount" in status and unchanged, status)

            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
            if open_tab("open the jobs tab after saving"):
                page.wait_for_timeout(2500)
                limits = page.evaluate("() => __panel.head().limits")
                want = ["$1.25 per run" if "per_run_usd" in free else "", "$4.00 per day" if "per_day_usd" in free else ""]
                report("the jobs panel shows the saved limits", all(w in limits for w in want), limits)

            open_setting()
            for field in free:
                page.fill(INPUTS[field], "")
            status = press_save()
            held = page.evaluate("() => __panel.spending()")
            ok = status.startswith("Saved") and all(held["saved"].get(f) is None for f in free)
            report("clear the limits set here", ok, status, f"the server holds: saved {held.get('saved')}")
            page.keyboard.press("Escape")

        restore = {f: (original.get("saved") or {}).get(f) for f in FIELDS}
        if held.get("saved") != restore:
            back = page.evaluate("(body) => __panel.setSpending(body)", restore)
            print(f"    put back what was saved before: {back.get('saved')}")

    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    print("FAILED: " + ", ".join(failures) if failures else "all steps as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
