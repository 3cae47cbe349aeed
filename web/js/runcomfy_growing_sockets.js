// Reference sockets that grow: the Seedream node shows image_1 plus one empty image socket. Connecting the
// last empty socket reveals the next one (up to image_10); disconnecting hides the empty ones at the end again.
//
// Only the frontend changes. The Python node still declares image_1 … image_10, so a workflow saved with all
// ten sockets (or with only some of them) loads and runs as before:
// - sockets keep their exact names (image_N), which is what the saved links and the queued prompt use;
// - a socket is only ever hidden when it is empty and every socket after it is empty too, so a link into
//   image_5 survives even when image_2 … image_4 are empty (they stay visible);
// - the sockets of a loaded graph are trimmed only after ComfyUI has finished configuring it and has put
//   every link's target slot in line with the input that owns it; any later change (removing or inserting
//   an input moves the inputs after it) re-points each link at its owner's new index.
import { app } from "../../../scripts/app.js";

const NODE_TYPES = new Set(["RunComfySeedream4EditSequential"]);
const SOCKET = /^image_(\d+)$/;
const MAX_SOCKETS = 10;
const MIN_VISIBLE = 2; // image_1 and one empty socket

function socketNumber(input) {
  if (!input || input.widget || input.type !== "IMAGE") return 0;
  const match = SOCKET.exec(input.name ?? "");
  return match ? Number(match[1]) : 0;
}

function linkOf(graph, id) {
  if (!graph || id == null) return null;
  const links = graph.links ?? graph._links;
  return (links?.get ? links.get(id) : links?.[id]) ?? null;
}

// Every link into this node targets the index of the input that owns it.
function repointLinks(node) {
  for (const [index, input] of (node.inputs ?? []).entries()) {
    const link = linkOf(node.graph, input.link);
    if (link) link.target_slot = index;
  }
}

// The socket properties the node definition gave (shape, label…), kept to re-create hidden sockets alike.
function rememberTemplates(node) {
  node.__runcomfySocketTemplates ??= {};
  for (const input of node.inputs ?? []) {
    const n = socketNumber(input);
    if (n && !node.__runcomfySocketTemplates[n]) {
      const { name, type, shape, label, localized_name: localizedName } = input;
      node.__runcomfySocketTemplates[n] = { name, type, shape, label, localized_name: localizedName };
    }
  }
}

// Show image_1 … image_(last connected + 1), at least image_1 and image_2, at most image_10.
function syncSockets(node) {
  if (!node?.inputs || node.__runcomfySyncing) return;
  node.__runcomfySyncing = true;
  try {
    rememberTemplates(node);
    const present = new Map();
    let lastConnected = 0;
    for (const input of node.inputs) {
      const n = socketNumber(input);
      if (!n) continue;
      present.set(n, input);
      if (input.link != null) lastConnected = Math.max(lastConnected, n);
    }
    const wanted = Math.min(MAX_SOCKETS, Math.max(MIN_VISIBLE, lastConnected + 1));
    let changed = false;

    // Hide the empty sockets past `wanted`, last first (all of them are empty: nothing after lastConnected is linked).
    for (let i = node.inputs.length - 1; i >= 0; i--) {
      const n = socketNumber(node.inputs[i]);
      if (n > wanted && node.inputs[i].link == null) {
        node.removeInput(i); // LiteGraph moves the target slot of every link after i down by one
        changed = true;
      }
    }
    // Reveal missing sockets up to `wanted` (e.g. image_3 when image_2 was just connected).
    for (let n = 1; n <= wanted; n++) {
      if (present.has(n)) continue;
      const template = node.__runcomfySocketTemplates[n] ?? { name: `image_${n}`, type: "IMAGE" };
      const { name, type, ...extra } = template;
      for (const key of Object.keys(extra)) if (extra[key] === undefined) delete extra[key];
      node.addInput(name, type, extra);
      changed = true;
    }
    if (!changed) return;

    // Keep the image sockets together and in number order, where the first of them was.
    const sockets = node.inputs.filter((input) => socketNumber(input));
    const others = node.inputs.filter((input) => !socketNumber(input));
    sockets.sort((a, b) => socketNumber(a) - socketNumber(b));
    const at = Math.min(node.inputs.findIndex((input) => socketNumber(input)), others.length);
    node.inputs.splice(0, node.inputs.length, ...others.slice(0, at), ...sockets, ...others.slice(at));
    repointLinks(node);

    const size = node.computeSize();
    node.setSize([Math.max(node.size[0], size[0]), node.__runcomfyFresh ? size[1] : Math.max(node.size[1], size[1])]);
    node.setDirtyCanvas?.(true, true);
  } finally {
    node.__runcomfySyncing = false;
  }
}

// Connections change in the middle of LiteGraph's own bookkeeping (a link replaced, dragged to another
// socket, a graph being loaded): look at the sockets once that is over.
function syncSoon(node) {
  if (node.__runcomfySyncPending) return;
  node.__runcomfySyncPending = true;
  setTimeout(() => {
    node.__runcomfySyncPending = false;
    if (node.graph) syncSockets(node);
  }, 0);
}

function chain(prototype, name, after) {
  const original = prototype[name];
  prototype[name] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

app.registerExtension({
  name: "RunComfy.Seedream.GrowingImageSockets",

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData?.name)) return;
    const INPUT = 1; // LiteGraph's slot type for inputs
    chain(nodeType.prototype, "onConnectionsChange", function (slotType) {
      if (slotType === INPUT) syncSoon(this);
    });
    chain(nodeType.prototype, "onConfigure", function () {
      this.__runcomfyFresh = false; // a loaded or pasted node keeps its saved size
      syncSoon(this);
    });
    // A whole graph was loaded and its links lined up with their inputs: trim now, so the first
    // frame drawn already shows the short form.
    chain(nodeType.prototype, "onAfterGraphConfigured", function () {
      syncSockets(this);
    });
  },

  nodeCreated(node) {
    if (!NODE_TYPES.has(node?.comfyClass)) return;
    node.__runcomfyFresh = true; // until configure() says it came from a saved graph
    rememberTemplates(node);
    syncSoon(node); // a node added by hand is trimmed once it is on the canvas
  },
});
