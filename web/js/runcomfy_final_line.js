// The final line of a run stays under the node until its next run: "Done: 4 images, request …, cost $0.12
// (today: …)", a refusal ("This run may cost up to $0.06 …; your limit per run is $0.01 …") or what went wrong.
//
// While the node runs, ComfyUI's frontend shows the node's progress text in its own text widget under the node
// ($$node-text-preview), in the classic design and in Nodes 2.0. Newer frontends (1.58.1 does) remove that
// widget when they reset the run's state, after execution_success, execution_error or execution_interrupted,
// taking the line with it; older ones (1.27.10, pinned by ComfyUI 0.3.64) leave it. This extension shows the
// line again through the frontend's own progress-text handling (a `progress_text` event for the node), so it
// looks and behaves like the text during the run, in both designs, and on old frontends changes nothing.
//
// Where the line comes from: the last progress text the node sent in this run (the Python node makes it the
// final line, also for a refusal or an error), the node's `ui` output {"runcomfy_line": [line]}, or, for an
// error that said nothing under the node, the error message.
//
// A page reload drops every output the frontend held (the images of a Preview Image node too), so the lines are
// also kept in this browser's localStorage, per workflow (its id) and node, and shown again when a workflow is
// loaded. They hold what the node showed: counts, request ids, costs and errors, never the token.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPES = new Set(["RunComfySeedream4EditSequential", "RunComfyResultByRequestId"]);
const UI_KEY = "runcomfy_line";
const STORAGE_KEY = "runcomfy.seedream.final-lines";
const MAX_KEPT = 200; // the most recent lines kept across workflows
const KEPT = "runcomfy_kept"; // marks the events this extension dispatches, which it must not read back
const PROGRESS_WIDGET = "$$node-text-preview"; // the frontend's text widget under a node
const GUARDED = Symbol("runcomfy final line");

const thisRun = new Map(); // execution id -> the last line of our node in the run under way

function rootGraph() {
  return app.rootGraph ?? app.graph;
}

// The node an execution id ("12", or "12:5" inside a subgraph) names, in the workflow shown.
function nodeAt(executionId) {
  let graph = rootGraph();
  let node = null;
  for (const part of String(executionId).split(":")) {
    node = graph?.getNodeById?.(Number(part)) ?? graph?.getNodeById?.(part) ?? null;
    graph = node?.subgraph;
  }
  return node;
}

function ours(executionId) {
  return executionId != null && NODE_TYPES.has(nodeAt(executionId)?.type);
}

function workflowKey() {
  return String(rootGraph()?.id ?? "workflow");
}

function readKept() {
  try {
    const kept = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "{}");
    return kept && typeof kept === "object" && !Array.isArray(kept) ? kept : {};
  } catch {
    return {};
  }
}

function writeKept(kept) {
  const newest = Object.entries(kept).sort((a, b) => (b[1]?.at ?? 0) - (a[1]?.at ?? 0)).slice(0, MAX_KEPT);
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(Object.fromEntries(newest)));
  } catch {
    // storage full or disabled: the line still stays until a reload
  }
}

// This workflow's kept lines: execution id -> line.
function keptLines() {
  const prefix = workflowKey() + " ";
  const lines = new Map();
  for (const [key, value] of Object.entries(readKept())) {
    if (key.startsWith(prefix) && typeof value?.line === "string") lines.set(key.slice(prefix.length), value.line);
  }
  return lines;
}

function keep(lines) {
  if (!lines.size) return;
  const kept = readKept();
  const prefix = workflowKey() + " ";
  const at = Date.now();
  for (const [id, line] of lines) kept[prefix + id] = { line, at };
  writeKept(kept);
}

// The frontend's own progress-text widget shows the line, as it showed the node's text during the run.
function show(executionId, line) {
  api.dispatchCustomEvent("progress_text", { nodeId: String(executionId), text: line, [KEPT]: true });
  guard(executionId);
}

// When the frontend removes the node's text widget, the kept line is shown again. The frontend removes it when it
// resets a job's state, which is not always while handling the run's last event (a line shown again right after
// an input error was seen removed later), so the run's end alone is not enough.
function guard(executionId) {
  const id = String(executionId);
  const widget = nodeAt(id)?.widgets?.find((w) => w.name === PROGRESS_WIDGET);
  if (!widget || widget[GUARDED]) return;
  widget[GUARDED] = true;
  const onRemove = widget.onRemove;
  widget.onRemove = function (...args) {
    const result = onRemove?.apply(this, args);
    setTimeout(() => showKept(id), 0);
    return result;
  };
}

// The kept lines of this workflow under their nodes (or under one node), except where a run under way already
// shows newer text.
function showKept(only = null) {
  for (const [id, line] of keptLines()) {
    if ((only === null || id === only) && !thisRun.has(id) && ours(id)) show(id, line);
  }
}

function runEnded() {
  keep(thisRun); // at once, so a run starting next cannot mix its lines in
  thisRun.clear();
  setTimeout(() => showKept(), 0); // after the frontend's own handlers of this event have reset the run's widgets
}

app.registerExtension({
  name: "RunComfy.Seedream.FinalLine",
  setup() {
    api.addEventListener("execution_start", () => thisRun.clear());

    api.addEventListener("progress_text", ({ detail }) => {
      if (!detail || detail[KEPT] || !detail.text || !ours(detail.nodeId)) return;
      thisRun.set(String(detail.nodeId), detail.text);
      setTimeout(() => guard(detail.nodeId), 0); // once the frontend has made its widget
    });

    api.addEventListener("executed", ({ detail }) => {
      const id = detail?.display_node ?? detail?.node;
      const line = detail?.output?.[UI_KEY]?.[0];
      if (typeof line === "string" && line && ours(id)) thisRun.set(String(id), line);
    });

    api.addEventListener("execution_error", ({ detail }) => {
      const id = detail?.node_id;
      if (id != null && ours(id)) {
        const message = String(detail.exception_message ?? "").trim();
        const last = thisRun.get(String(id));
        // the node shows its own errors as its last line; anything else that went wrong is said by its message
        if (message && !(last && last.includes(message))) thisRun.set(String(id), message);
      }
      runEnded();
    });

    api.addEventListener("execution_success", runEnded);
    api.addEventListener("execution_interrupted", runEnded);
  },
  afterConfigureGraph() {
    setTimeout(() => showKept(), 0); // a loaded workflow (also after a reload) shows the lines its nodes had
  },
});
