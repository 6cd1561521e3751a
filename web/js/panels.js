// DOM panels: toolbar, queue/history side panel, gallery with a lightbox, error panel, toasts,
// connection status and the keyboard-shortcut help.
import { showMenu } from "./menus.js";
import { exportApi, loadAnyDocument, pickFile, saveWorkflow, defaultGraph } from "./files.js";

export const SHORTCUTS = [
  ["Ctrl+Enter", "Queue the workflow (batch count from the toolbar)"],
  ["Ctrl+Shift+Enter", "Queue at the front"],
  ["Ctrl+Alt+Enter", "Interrupt the running prompt"],
  ["Double-click background", "Search and add a node"],
  ["Right-click", "Node / canvas menu (Add Node by category)"],
  ["Drag background / middle mouse", "Pan"],
  ["Wheel", "Zoom at the cursor"],
  [".", "Fit the view to the graph"],
  ["Ctrl+drag / Shift+drag background", "Box select (Shift adds)"],
  ["Shift+click", "Add to / remove from selection"],
  ["Ctrl+A", "Select all"],
  ["Delete / Backspace", "Delete selection"],
  ["Ctrl+C / Ctrl+V", "Copy / paste (works across tabs)"],
  ["Ctrl+D", "Duplicate selection"],
  ["Ctrl+Z / Ctrl+Y (Ctrl+Shift+Z)", "Undo / redo"],
  ["Ctrl+B", "Bypass selected nodes"],
  ["Ctrl+M", "Mute selected nodes"],
  ["Alt+C", "Collapse / expand selected nodes"],
  ["Ctrl+G", "Group selected nodes"],
  ["Ctrl+S / Ctrl+O", "Save (asks for a file name) / open workflow"],
  ["?", "This help"],
];

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  e.append(...children.filter((c) => c != null));
  return e;
};

// replaceChildren turns a null into the text "null": leave the optional children out.
const fill = (target, ...children) => target.replaceChildren(...children.filter((c) => c != null));

export class Panels {
  constructor(app, api, runner) {
    this.app = app; this.api = api; this.runner = runner;
    this.buildToolbar();
    this.side = el("div", { id: "side-panel", class: "hidden" });
    this.errorBox = el("div", { id: "error-panel", class: "hidden" });
    this.toasts = el("div", { id: "toasts" });
    this.conn = el("div", { id: "connection", class: "hidden" }, "Reconnecting to server…");
    this.progressBar = el("div", { id: "progress" }, el("div", { id: "progress-fill" }));
    this.gallery = el("div", { id: "gallery" });
    document.body.append(this.side, this.errorBox, this.toasts, this.conn, this.progressBar, this.gallery);
    app.addEventListener("toast", (e) => this.toast(e.detail.message, e.detail.error));
    runner.addEventListener("error", () => this.showError());
    runner.addEventListener("outputs", () => this.renderGallery());
    runner.addEventListener("change", () => this.renderProgress());
    runner.addEventListener("queue", () => { this.renderProgress(); if (!this.side.classList.contains("hidden")) this.refreshSide(); });
    api.addEventListener("status", (e) => { this.queueCount.textContent = String(e.detail?.status?.exec_info?.queue_remaining ?? ""); });
    api.addEventListener("connection", (e) => { if (e.detail.connected) { this.everConnected = true; this.conn.classList.add("hidden"); } else this.conn.classList.remove("hidden"); });
  }
  buildToolbar() {
    const { app, runner, api } = this;
    this.batch = el("input", { id: "batch-count", type: "number", min: "1", max: "100", value: "1", title: "Batch count" });
    this.queueCount = el("span", { id: "queue-count" });
    this.examples = el("button", { id: "examples-btn", class: "hidden", onclick: (e) => this.examplesMenu(e) }, "Examples");
    const bar = el("div", { id: "toolbar" },
      el("span", { class: "brand" }, "diffgraph"),
      el("button", { id: "queue-btn", class: "primary", title: "Queue the workflow to run (Ctrl+Enter)", onclick: () => runner.queue(this.batchCount()) }, "Run"),
      this.batch,
      el("button", { id: "interrupt-btn", onclick: () => api.interrupt().catch(() => {}) }, "Interrupt"),
      el("button", { id: "queue-panel-btn", title: "Running and pending prompts", onclick: () => this.toggleSide("queue") }, "Queue ", this.queueCount),
      el("button", { id: "history-btn", onclick: () => this.toggleSide("history") }, "History"),
      el("span", { class: "sep" }),
      el("button", { id: "save-btn", onclick: () => saveWorkflow(app) }, "Save"),
      el("button", { id: "open-btn", onclick: () => pickFile(app) }, "Open"),
      el("button", { id: "export-api-btn", onclick: () => exportApi(app) }, "Export API"),
      this.examples,
      el("button", { id: "default-btn", onclick: () => app.loadDocument(defaultGraph(app)) }, "Default"),
      el("button", { id: "clear-btn", onclick: () => { app.loadDocument({ nodes: [], links: [] }); } }, "Clear"),
      el("button", { id: "fit-btn", onclick: () => app.fitView() }, "Fit"),
      el("button", { id: "help-btn", onclick: () => this.toggleHelp() }, "?"),
    );
    document.body.append(bar);
  }
  batchCount() { return Math.max(1, Math.min(100, Number(this.batch.value) || 1)); }
  async initExamples() {
    try {
      const list = await this.api.listWorkflows();
      this.exampleList = Array.isArray(list) ? list : (list?.workflows || []);
      if (this.exampleList.length) this.examples.classList.remove("hidden");
    } catch { /* no /workflows route on this server: the menu stays hidden */ }
  }
  examplesMenu(e) {
    const r = e.target.getBoundingClientRect();
    showMenu(this.exampleList.map((name) => ({ label: String(name).replace(/\.json$/, ""), action: async () => {
      try { loadAnyDocument(this.app, await this.api.getWorkflow(name), String(name)); } catch (err) { this.toast(`Could not load ${name}: ${err.message}`, true); }
    } })), r.left, r.bottom);
  }
  toast(message, error = false) {
    const t = el("div", { class: `toast${error ? " error" : ""}` }, message);
    this.toasts.append(t);
    setTimeout(() => t.remove(), error ? 7000 : 3000);
  }
  renderProgress() {
    const p = this.app.progress;
    const fill = this.progressBar.firstChild;
    fill.style.width = p && p.max ? `${(100 * p.value) / p.max}%` : "0%";
    this.progressBar.dataset.value = p ? `${p.value}/${p.max}` : "";
  }
  showError() {
    const e = this.runner.lastError;
    if (!e) { this.errorBox.classList.add("hidden"); return; }
    const details = el("details", {}, el("summary", {}, "Details / traceback"), el("pre", {}, e.details || ""));
    fill(this.errorBox,
      el("div", { class: "error-title" }, e.title, el("button", { class: "close", onclick: () => this.errorBox.classList.add("hidden") }, "×")),
      el("div", { class: "error-message" }, e.message), details);
    this.errorBox.classList.remove("hidden");
  }
  renderGallery() {
    const items = this.runner.outputs.slice(0, 24).map((o) => {
      const img = el("img", { src: o.url, title: o.image.filename, class: "gallery-img" });
      img.addEventListener("click", () => this.lightbox(o));
      return img;
    });
    this.gallery.replaceChildren(...items);
  }
  lightbox(o) {
    const box = el("div", { id: "lightbox", onclick: (e) => { if (e.target === box) box.remove(); } },
      el("img", { src: o.url }), el("a", { href: o.url, target: "_blank" }, `Open ${o.image.filename}`));
    document.body.append(box);
  }
  toggleSide(kind) {
    if (!this.side.classList.contains("hidden") && this.sideKind === kind) { this.side.classList.add("hidden"); return; }
    this.sideKind = kind; this.side.classList.remove("hidden"); this.refreshSide();
  }
  async refreshSide() {
    if (this.sideKind === "queue") await this.renderQueue(); else await this.renderHistory();
  }
  async renderQueue() {
    let q;
    try { q = await this.api.getQueue(); } catch (e) { fill(this.side, el("div", {}, `Queue unavailable: ${e.message}`)); return; }
    const row = (item, running) => el("div", { class: `queue-item${running ? " running" : ""}`, "data-id": item[1] },
      el("span", {}, `${running ? "▶ running" : "pending"} #${item[0]} ${String(item[1]).slice(0, 8)}`),
      running ? el("button", { class: "cancel", onclick: async () => { await this.api.interrupt(); this.refreshSide(); } }, "Cancel")
        : el("button", { class: "delete", onclick: async () => { await this.api.deleteQueueItems([item[1]]); this.refreshSide(); } }, "Delete"));
    fill(this.side,
      el("h3", {}, "Queue"),
      el("button", { id: "clear-queue", onclick: async () => { await this.api.clearQueue(); this.refreshSide(); } }, "Clear pending"),
      ...(q.queue_running || []).map((i) => row(i, true)),
      ...(q.queue_pending || []).map((i) => row(i, false)),
      (q.queue_running?.length || q.queue_pending?.length) ? null : el("div", { class: "empty" }, "Nothing queued"));
  }
  async renderHistory() {
    let h;
    try { h = await this.api.getHistory(); } catch (e) { fill(this.side, el("div", {}, `History unavailable: ${e.message}`)); return; }
    const entries = Object.entries(h).sort((a, b) => (b[1].prompt?.[0] ?? 0) - (a[1].prompt?.[0] ?? 0));
    fill(this.side, el("h3", {}, "History"),
      el("button", { id: "clear-history", onclick: async () => { await this.api.deleteHistory(); this.refreshSide(); } }, "Clear history"),
      ...entries.map(([id, item]) => {
        const images = Object.values(item.outputs || {}).flatMap((o) => o.images || []);
        const ok = item.status?.completed !== false;
        return el("div", { class: `history-item${ok ? "" : " failed"}`, "data-id": id, onclick: () => this.loadHistory(item) },
          el("span", {}, `#${item.prompt?.[0] ?? ""} ${ok ? "✓" : "✗"} ${images.length} image(s)`),
          ...images.slice(0, 3).map((im) => el("img", { src: this.api.viewUrl(im), class: "thumb" })));
      }),
      entries.length ? null : el("div", { class: "empty" }, "No history yet"));
  }
  loadHistory(item) {
    const wf = item.prompt?.[3]?.extra_pnginfo?.workflow;
    if (wf) this.app.loadDocument(wf);
    else if (item.prompt?.[2]) loadAnyDocument(this.app, item.prompt[2]);
    this.runner.applyHistory(item);
  }
  toggleHelp() {
    const existing = document.getElementById("help");
    if (existing) { existing.remove(); return; }
    const table = el("table", {}, ...SHORTCUTS.map(([k, v]) => el("tr", {}, el("td", {}, el("kbd", {}, k)), el("td", {}, v))));
    const box = el("div", { id: "help", onclick: (e) => { if (e.target === box) box.remove(); } },
      el("div", { class: "help-inner" }, el("h3", {}, "Keyboard shortcuts"), table,
        el("p", {}, "Drag a .json workflow or a PNG with an embedded workflow onto the canvas to open it.")));
    document.body.append(box);
  }
}
