// Running workflows: queueing (with batch count and control_after_generate), server events
// (executing highlight, progress, previews, outputs, errors) and a history-polling fallback.
import { uiToApi } from "./apiformat.js";
import { applyControlAfterGenerate } from "./widgets.js";

export class Runner extends EventTarget {
  constructor(app, api) {
    super();
    this.app = app; this.api = api;
    this.outputs = []; // gallery: [{image, url, nodeId, promptId}]
    this.waiting = new Set();
    this.lastError = null;
    this.finishedEarly = new Set();
    this.reported = new Set(); // execution errors already toasted (the WebSocket and /history both tell)
    // Another workflow: the previous one's error panel and highlights no longer apply.
    app.addEventListener("load", () => { this.lastError = null; app.nodeErrors.clear(); this.emit("error"); });
    const on = (type, fn) => api.addEventListener(type, (e) => { fn(e.detail); app.setDirty(); });
    on("executing", (d) => {
      if (d?.node == null) { app.executing = null; app.progress = null; if (d?.prompt_id) this.finish(d.prompt_id); }
      else { app.executing = String(d.node); app.progress = null; this.clearPreview(); }
    });
    on("execution_start", () => { app.nodeErrors.clear(); this.lastError = null; this.emit(); });
    on("progress", (d) => { app.progress = { node: d.node ?? app.executing, value: d.value, max: d.max }; this.emit(); });
    on("executed", (d) => this.applyOutput(String(d.node ?? d.display_node), d.output, d.prompt_id));
    on("execution_error", (d) => this.showExecutionError(d));
    on("execution_interrupted", () => { app.executing = null; app.progress = null; app.toast("Interrupted"); });
    on("execution_success", (d) => { app.executing = null; app.progress = null; if (d?.prompt_id) this.finish(d.prompt_id); });
    on("status", () => this.emit("queue"));
    on("b_preview", (blob) => {
      const node = app.graph.nodes.get(Number(app.executing));
      if (!node) return;
      if (node.preview) URL.revokeObjectURL(node.preview);
      node.preview = URL.createObjectURL(blob);
      node.fitSize();
    });
  }
  emit(kind = "change") { this.dispatchEvent(new Event(kind)); }
  clearPreview() { for (const n of this.app.graph.nodes.values()) if (n.preview) { URL.revokeObjectURL(n.preview); n.preview = null; } }
  async queue(batch = 1, front = false) {
    const app = this.app;
    app.nodeErrors.clear();
    for (let i = 0; i < batch; i++) {
      const doc = app.graph.serialize(app.view);
      let prompt;
      try { prompt = uiToApi(doc, app.schemas); } catch (e) { app.toast(`Cannot queue: ${e.message}`, true); return false; }
      try {
        const res = await this.api.queuePrompt(prompt, doc, front);
        this.waiting.add(res.prompt_id);
        if (this.finishedEarly.delete(res.prompt_id)) this.finish(res.prompt_id);
        if (!this.api.connected) this.poll(res.prompt_id);
      } catch (e) {
        this.showValidationErrors(e.body, e.message);
        return false;
      }
      applyControlAfterGenerate(app.graph);
      app.changed();
    }
    this.emit("queue");
    return true;
  }
  // 400 from /prompt: {error: {message}, node_errors: {id: {errors: [{message, details, extra_info: {input_name}}], class_type}}}
  showValidationErrors(body, fallback) {
    const app = this.app;
    const nodeErrors = body?.node_errors || {};
    const message = body?.error?.message || fallback;
    for (const [id, entry] of Object.entries(nodeErrors)) {
      const inputs = new Set();
      const messages = [];
      for (const err of entry.errors || []) {
        if (err.extra_info?.input_name) inputs.add(err.extra_info.input_name);
        messages.push(err.details ? `${err.message}: ${err.details}` : err.message);
      }
      app.nodeErrors.set(String(id), { message: messages.join("\n"), inputs });
    }
    const lines = Object.entries(nodeErrors).map(([id, e]) => {
      const node = app.graph.nodes.get(Number(id));
      return `#${id} ${node?.title || e.class_type}: ${(e.errors || []).map((x) => `${x.extra_info?.input_name ? `[${x.extra_info.input_name}] ` : ""}${x.message}${x.details ? ` (${x.details})` : ""}`).join("; ")}`;
    });
    this.lastError = { title: "Prompt invalid", message: [message, ...lines].join("\n"), details: JSON.stringify(body ?? {}, null, 2) };
    app.toast(message, true);
    this.emit("error");
    app.setDirty();
  }
  showExecutionError(d) {
    const app = this.app;
    app.executing = null; app.progress = null;
    app.nodeErrors.set(String(d.node_id), { message: d.exception_message || "failed", inputs: new Set() });
    this.lastError = { title: `Error in #${d.node_id} ${d.node_type || ""}`, message: d.exception_message || "", details: Array.isArray(d.traceback) ? d.traceback.join("") : (d.traceback || "") };
    const key = `${d.prompt_id}:${d.node_id}:${d.exception_message}`;
    if (!this.reported.has(key)) { this.reported.add(key); app.toast(`${d.node_type || "node"} #${d.node_id} failed: ${d.exception_message}`, true); }
    this.emit("error");
  }
  applyOutput(nodeId, output, promptId) {
    const node = this.app.graph.nodes.get(Number(nodeId));
    const images = [...(output?.images || []), ...(output?.gifs || [])];
    if (!images.length) return;
    const urls = images.map((im) => this.api.viewUrl(im));
    if (node) { node.images = images; node.imageUrls = urls; node.preview = null; node.fitSize(); }
    for (const [k, im] of images.entries()) {
      if (!this.outputs.some((o) => o.url === urls[k])) this.outputs.unshift({ image: im, url: urls[k], nodeId, promptId });
    }
    this.emit("outputs");
  }
  async finish(promptId) {
    // A prompt that fails at once can end before /prompt's answer arrives: finished when it does.
    if (!this.waiting.has(promptId)) { this.finishedEarly.add(promptId); return; }
    try {
      const h = (await this.api.getHistoryItem(promptId))[promptId];
      if (h) this.applyHistory(h);
    } catch { /* history not there yet */ }
    this.waiting.delete(promptId);
    this.emit("queue");
  }
  applyHistory(h) {
    for (const [id, out] of Object.entries(h.outputs || {})) this.applyOutput(id, out, h.prompt?.[1]);
    for (const [type, data] of h.status?.messages || []) if (type === "execution_error") this.showExecutionError(data);
  }
  // Without a WebSocket, find out when a prompt is done from /history.
  async poll(promptId) {
    for (let k = 0; k < 2400 && this.waiting.has(promptId); k++) {
      await new Promise((r) => setTimeout(r, 400));
      if (this.api.connected) return;
      try {
        const h = (await this.api.getHistoryItem(promptId))[promptId];
        if (h) { this.waiting.delete(promptId); this.applyHistory(h); this.app.executing = null; this.emit("queue"); this.app.setDirty(); return; }
      } catch { /* keep polling */ }
    }
  }
}
