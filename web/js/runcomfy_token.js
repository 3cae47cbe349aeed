// "RunComfy > API token" in ComfyUI's settings: a password dialog that hands the token to this
// pack's server route, which checks it with RunComfy and stores it owner-only on the server.
// The token is never kept in ComfyUI's settings, in a workflow, or in this page after saving.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { el } from "./runcomfy_dom.js";

const ROUTE = "/runcomfy/seedream/token";
const SOURCES = {
  env: "(from an environment variable, which takes precedence)",
  settings: "(saved from this dialog)",
  cli: "(from the RunComfy CLI token file)",
};

async function fetchStatus() {
  const response = await api.fetchApi(ROUTE, { method: "GET" });
  return response.json();
}

function describe(status) {
  if (!status || !status.ok) return status?.error ?? "Token status unknown."; // e.g. a host name to allow
  if (status.configured) return `A token is configured ${SOURCES[status.source] ?? ""}.`;
  return status.detail ?? "No token configured yet."; // e.g. a malformed token: where it is, never what it is
}

function openTokenDialog(onChange) {
  const input = el("input", {
    type: "password",
    autocomplete: "off",
    spellcheck: false,
    placeholder: "Paste your RunComfy API token",
    className: "runcomfy-token-input",
  });
  Object.assign(input.style, { width: "100%", padding: "6px", margin: "8px 0", boxSizing: "border-box" });
  const message = el("div", { className: "runcomfy-token-message", textContent: "Checking status…" });
  const save = el("button", { textContent: "Check and save", className: "runcomfy-token-save" });
  const remove = el("button", { textContent: "Remove saved token", className: "runcomfy-token-remove" });
  const close = el("button", { textContent: "Close", className: "runcomfy-token-close" });
  const box = el("div", { className: "runcomfy-token-dialog" }, [
    el("h3", { textContent: "RunComfy API token" }),
    el("p", {
      textContent:
        "The token is checked with RunComfy, then stored on this ComfyUI server, readable only by its user. " +
        "It is never saved in workflows or images.",
    }),
    input,
    message,
    el("div", {}, [save, remove, close]),
  ]);
  Object.assign(box.style, {
    position: "fixed", top: "30%", left: "50%", transform: "translateX(-50%)", zIndex: 10000,
    background: "var(--comfy-menu-bg, #222)", color: "var(--fg-color, #eee)", padding: "16px",
    border: "1px solid var(--border-color, #555)", borderRadius: "8px", width: "420px",
  });
  for (const button of [save, remove, close]) button.style.marginRight = "8px";
  const shade = el("div", { className: "runcomfy-token-shade" }, [box]);
  Object.assign(shade.style, { position: "fixed", inset: "0", background: "rgba(0,0,0,0.5)", zIndex: 9999 });
  const dismiss = () => shade.remove();
  close.onclick = dismiss;
  shade.onclick = (event) => { if (event.target === shade) dismiss(); };
  input.onkeydown = (event) => { if (event.key === "Enter") save.click(); if (event.key === "Escape") dismiss(); };

  fetchStatus().then((status) => { message.textContent = describe(status); }).catch(() => {
    message.textContent = "Could not reach the pack's server route.";
  });

  save.onclick = async () => {
    const token = input.value.trim();
    if (!token) { message.textContent = "Paste a token first."; return; }
    save.disabled = true;
    message.textContent = "Checking the token with RunComfy…";
    try {
      const response = await api.fetchApi(ROUTE, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token }),
      });
      const result = await response.json();
      if (result.ok) input.value = ""; // keep a refused token in the box so it can be corrected
      message.textContent = result.ok ? `${result.message} ${describe(result)}` : result.error;
      onChange?.();
    } catch (error) {
      message.textContent = "Saving failed: the ComfyUI server did not answer.";
    } finally {
      save.disabled = false;
    }
  };
  remove.onclick = async () => {
    let result;
    try {
      result = await (await api.fetchApi(ROUTE, { method: "DELETE" })).json();
    } catch {
      message.textContent = "Removing failed: the ComfyUI server did not answer.";
      return;
    }
    if (!result.ok) { message.textContent = describe(result); return; }
    message.textContent = (result.removed ? "Saved token removed. " : "No saved token. ") + describe(result);
    onChange?.();
  };
  document.body.append(shade);
  input.focus();
}

function renderSetting() {
  const status = el("span", { className: "runcomfy-token-status", textContent: "…" });
  const refresh = () => fetchStatus().then((s) => { status.textContent = describe(s); }).catch(() => {
    status.textContent = "Could not reach the pack's server route.";
  });
  const button = el("button", { textContent: "Set token…", className: "runcomfy-token-open" });
  button.style.marginRight = "8px";
  button.onclick = () => openTokenDialog(refresh);
  refresh();
  return el("div", {}, [button, status]);
}

app.registerExtension({
  name: "RunComfy.Seedream.TokenSettings",
  settings: [
    {
      id: "RunComfy.APIToken",
      category: ["RunComfy", "API token"],
      name: "RunComfy API token",
      tooltip: "Used by the RunComfy nodes. Stored on the ComfyUI server, never in workflows.",
      type: () => renderSetting(),
      defaultValue: "",
    },
  ],
  commands: [{ id: "RunComfy.SetAPIToken", label: "RunComfy: set API token", function: () => openTokenDialog() }],
});
