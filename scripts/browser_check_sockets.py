"""Check the growing image sockets of the Seedream node in a real ComfyUI frontend (headless Chromium).

Not part of the pytest suite: it needs a running ComfyUI with this pack in custom_nodes/, Chromium and
Python Playwright. It starts nothing itself. To run it against the local fake service (no token, no cost):

    python scripts/fake_service.py --port 8770 --queue-seconds 1 --run-seconds 2 --output-scale 0.25
    RUNCOMFY_MODEL_API_BASE=http://127.0.0.1:8770/v1 RUNCOMFY_API_TOKEN=fake-runcomfy-token \
        python main.py --cpu --port 8190          # in ComfyUI; its input/ must hold example.png
    python scripts/browser_check_sockets.py http://127.0.0.1:8190 [--vue-nodes] [--chromium /usr/bin/chromium] [--json out.json]

It runs with the classic node design, or with --vue-nodes in "Nodes 2.0" (setting Comfy.VueNodes.Enabled, the
nodes are DOM elements); either way it sets the setting for its session and puts it back afterwards. In Nodes 2.0
each step also compares the image sockets the node's element shows with the node's inputs.

Steps (each prints the image sockets the node shows, `*` = connected, and whether every link still targets
the input that owns it): a new node; connect image_1; connect image_2 by dragging with the mouse (the canvas is
first moved so both nodes are in the middle of it, and each end of the drag must be reachable: the canvas, or in
Nodes 2.0 the slot's element, is what is under the point, not a bar drawn over the canvas); connect
image_3; disconnect image_2 (a middle socket stays); disconnect image_3; connect all ten; disconnect image_10;
leave image_1 and image_5; export (app.graph.serialize and app.graphToPrompt); reload the export; load the
pack's own example workflows as saved (all ten sockets) and a variant whose only second link goes to image_5;
queue the reloaded graph and the image_5 variant and print the text the node shows when done; load a workflow
saved before count_in_prompt and reference_format existed and check its values and the new widgets' defaults.
Exits 1 if any step shows other sockets than expected, a link out of place, or a failed run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from comfy_browser import comfy_page, screenshot_node

NODE = "RunComfySeedream4EditSequential"
SOCKET = re.compile(r"image_\d+")
EXAMPLES = Path(__file__).resolve().parents[1] / "example_workflows"


def expected(*connected: int, shown: int) -> list[str]:
    return [f"image_{n}" + ("*" if n in connected else "") for n in range(1, shown + 1)]


def image_5_variant() -> dict:
    """The product-shots example as saved (ten sockets), its image_2 link dropped and its image_3 link moved to image_5."""
    workflow = json.loads((EXAMPLES / "seedream_product_shots.json").read_text())
    ours = next(node for node in workflow["nodes"] if node["type"] == NODE)
    slot = {socket["name"]: index for index, socket in enumerate(ours["inputs"])}
    dropped = ours["inputs"][slot["image_2"]]["link"]
    moved = ours["inputs"][slot["image_3"]]["link"]
    ours["inputs"][slot["image_2"]]["link"] = None
    ours["inputs"][slot["image_3"]]["link"] = None
    ours["inputs"][slot["image_5"]]["link"] = moved
    workflow["links"] = [link for link in workflow["links"] if link[0] != dropped]
    for link in workflow["links"]:
        if link[0] == moved:
            link[4] = slot["image_5"]
    for node in workflow["nodes"]:
        for output in node.get("outputs") or []:
            if dropped in (output.get("links") or []):
                output["links"].remove(dropped)
    return workflow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the running ComfyUI, e.g. http://127.0.0.1:8190")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--json", help="also write everything seen to this file")
    parser.add_argument("--screenshot", help="save a screenshot of the node after the reload to this PNG")
    parser.add_argument("--vue-nodes", action="store_true", help='run in "Nodes 2.0" (Comfy.VueNodes.Enabled = true)')
    args = parser.parse_args(argv)

    record: dict = {"steps": []}
    failures: list[str] = []

    with comfy_page(args.url, args.chromium, vue_nodes=args.vue_nodes) as page:
        frontend = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")
        design = "Nodes 2.0" if page.evaluate("() => __rc.vueNodes()") else "classic nodes"
        record["frontend"], record["design"] = frontend, design
        print(f"frontend {frontend}, {design}")

        def step(name: str, want: list[str] | None, settle_ms: int = 150) -> list[str]:
            page.wait_for_timeout(settle_ms)  # the extension looks at the sockets once LiteGraph is done
            seen, drawn = page.evaluate("() => [__rc.ours().map(__rc.sockets), __rc.ours().map(__rc.shownSockets)]")
            problems = page.evaluate("() => __rc.linksConsistent()")
            # Nodes 2.0: the node's element shows the same image sockets as the node has, in the same order
            mismatch = [d for s, d in zip(seen, drawn, strict=True) if d is not None and d != [n.rstrip("*") for n in s]]
            as_wanted = want is None or all(s == want for s in seen)
            ok = not problems and not mismatch and as_wanted
            record["steps"].append({"step": name, "sockets": seen, "shown": drawn, "expected": want, "link_problems": problems})
            shown = seen if len(seen) != 1 else seen[0]
            print(f"{'ok ' if ok else 'BAD'} {name}: {shown}" + (f" expected {want}" if not as_wanted else ""))
            for problem in problems:
                print(f"    link problem: {problem}")
            for d in mismatch:
                print(f"    the node's element shows {d}")
            if not ok:
                failures.append(name)
            return seen

        def queue(name: str, key: str) -> None:
            """Press Queue; print how the run ended and the text the node shows."""
            result = page.evaluate("() => __rc.queue()")
            record[key] = result
            print(f"{'ok ' if result['kind'] == 'success' else 'BAD'} {name}: {result['kind']}")
            if result["texts"]:
                last = result["texts"][-1]
                print(f"    node {last['nodeId']} shows: {last['text']!r}")
            if result["kind"] != "success":
                failures.append(name)

        page.evaluate(
            """() => {
              app.graph.clear();
              const seed = __rc.add('RunComfySeedream4EditSequential', 700, 80);
              const preview = __rc.add('PreviewImage', 1250, 80);
              seed.connect(0, preview, 0);
              window.__t = { seed, loads: [] };
              for (let i = 0; i < 10; i++) {
                __t.loads.push(__rc.add('LoadImage', 40 + (i % 2) * 330, 40 + Math.floor(i / 2) * 380));
              }
              __rc.set(seed, 'prompt', 'Generate 2 images of this scene, one at noon and one at night.');
              __rc.set(seed, 'max_images', 2);
              app.canvas.ds.scale = 0.5; app.canvas.ds.offset = [0, 0]; app.canvas.setDirty(true, true);
            }"""
        )
        at = "(name) => __t.seed.inputs.findIndex((i) => i.name === name)"
        connect = f"([load, name]) => {{ const at = {at}; __t.loads[load].connect(0, __t.seed, at(name)); }}"
        disconnect = f"(name) => {{ const at = {at}; __t.seed.disconnectInput(at(name)); }}"

        step("new node", expected(shown=2))
        page.evaluate(connect, [0, "image_1"])
        step("connect image_1", expected(1, shown=2))

        # image_2 by hand: drag from LoadImage #2's IMAGE output onto the socket, where a person could reach both
        page.wait_for_timeout(200)
        page.evaluate("async () => { await __rc.centre([__t.loads[1], __t.seed]); }")
        page.wait_for_timeout(200)
        ends = page.evaluate(
            f"""() => {{
              const at = {at};
              return [__rc.slotPoint(__t.loads[1], false, 0), __rc.slotPoint(__t.seed, true, at('image_2'))];
            }}"""
        )
        record["drag"] = ends
        unreachable = [
            f"{label} ({end['x']:.1f}, {end['y']:.1f}) is under {end['under']}, not {end['expected']}"
            if end["x"] is not None
            else f"{label}: {end['under']}"
            for label, end in zip(("start", "end"), ends, strict=True)
            if not end["ok"]
        ]
        if unreachable:
            print("BAD connect image_2 by mouse drag: not dragged, " + "; ".join(unreachable))
            failures.append("connect image_2 by mouse drag")
        else:
            (x0, y0), (x1, y1) = [(end["x"], end["y"]) for end in ends]
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=8)
            page.mouse.move(x1, y1, steps=8)
            page.mouse.up()
            step("connect image_2 by mouse drag", expected(1, 2, shown=3), settle_ms=300)

        page.evaluate(connect, [2, "image_3"])
        step("connect image_3", expected(1, 2, 3, shown=4))
        page.evaluate(disconnect, "image_2")
        step("disconnect image_2 (middle socket stays)", expected(1, 3, shown=4))
        page.evaluate(disconnect, "image_3")
        step("disconnect image_3", expected(1, shown=2))
        for n in range(2, 11):
            page.evaluate(connect, [n - 1, f"image_{n}"])
            page.wait_for_timeout(60)
        step("connect image_2 ... image_10 one after another", expected(*range(1, 11), shown=10))
        page.evaluate(disconnect, "image_10")
        step("disconnect image_10", expected(*range(1, 10), shown=10))
        for n in (9, 8, 7, 6, 4, 3, 2):
            page.evaluate(disconnect, f"image_{n}")
            page.wait_for_timeout(60)
        step("leave only image_1 and image_5", expected(1, 5, shown=6))

        saved = page.evaluate(
            """async () => {
              const workflow = app.graph.serialize();
              const prompt = (await app.graphToPrompt()).output;
              return { workflow, prompt };
            }"""
        )
        workflow, prompt = saved["workflow"], saved["prompt"]
        ours = next(node for node in workflow["nodes"] if node["type"] == NODE)
        node_links = [
            {"link": link[0], "from_node": link[1], "target_slot": link[4], "input_at_slot": ours["inputs"][link[4]]["name"]}
            for link in workflow["links"]
            if link[3] == ours["id"]
        ]
        owned = all(ours["inputs"][entry["target_slot"]]["link"] == entry["link"] for entry in node_links)
        prompt_inputs = {k: v for k, v in prompt[str(ours["id"])]["inputs"].items() if SOCKET.fullmatch(k)}
        record["export"] = {
            "node_inputs": [(i["name"], i.get("link")) for i in ours["inputs"]],
            "links": node_links,
            "prompt_image_inputs": prompt_inputs,
        }
        print(f"{'ok ' if owned else 'BAD'} export: links into the node {node_links}")
        print(f"    prompt image inputs: {prompt_inputs}")
        if not owned or sorted(prompt_inputs) != ["image_1", "image_5"]:
            failures.append("export")

        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
        step("reload the export", expected(1, 5, shown=6), settle_ms=400)
        if args.screenshot:
            screenshot_node(page, page.evaluate("() => __rc.ours()[0].id"), args.screenshot)
        queue("queue the reloaded graph", "run_reloaded")

        for path in sorted(EXAMPLES.glob("*.json")):
            saved_workflow = json.loads(path.read_text())
            node = next(n for n in saved_workflow["nodes"] if n["type"] == NODE)
            linked = [int(i["name"].split("_")[1]) for i in node["inputs"] if i.get("link") is not None and SOCKET.fullmatch(i["name"])]
            page.evaluate("async (wf) => { await app.loadGraphData(wf); }", saved_workflow)
            step(f"load {path.name} as saved", expected(*linked, shown=max(linked) + 1), settle_ms=400)

        variant = image_5_variant()
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", variant)
        step("load a saved workflow linking image_1 and image_5 only", expected(1, 5, shown=6), settle_ms=400)
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        variant_inputs = {k: v for n in prompt.values() if n["class_type"] == NODE for k, v in n["inputs"].items() if SOCKET.fullmatch(k)}
        print(f"    prompt image inputs: {variant_inputs}")
        record["variant_prompt_image_inputs"] = variant_inputs
        if sorted(variant_inputs) != ["image_1", "image_5"]:
            failures.append("variant prompt")
        queue("queue it", "run_variant")

        # A workflow saved before count_in_prompt and reference_format existed: eight widget values.
        older = json.loads((EXAMPLES / "seedream_one_reference_to_image_set.json").read_text())
        older_node = next(node for node in older["nodes"] if node["type"] == NODE)
        older_node["widgets_values"] = older_node["widgets_values"][:8]
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", older)
        prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
        widgets = next(n["inputs"] for n in prompt.values() if n["class_type"] == NODE)
        kept = [widgets[name] for name in ("prompt", "max_images", "image_size", "seed")] == [
            older_node["widgets_values"][i] for i in range(4)
        ]
        defaults = (widgets.get("count_in_prompt"), widgets.get("reference_format")) == ("add if missing", "png")
        print(f"{'ok ' if kept and defaults else 'BAD'} load a workflow saved with eight widget values: {widgets}")
        if not (kept and defaults):
            failures.append("older workflow")

    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    print("FAILED: " + ", ".join(failures) if failures else "all steps as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
