// HTTP + WebSocket client for ComfyUI's API shapes (/prompt, /queue, /history, /view, /ws ...).

export class ApiClient extends EventTarget {
  constructor(base = null) {
    super();
    const dir = location.pathname.replace(/[^/]*$/, "");
    this.base = base ?? `${location.origin}${dir}api`;
    this.clientId = sessionStorage.getItem("diffgraph.clientId") || crypto.randomUUID().replace(/-/g, "");
    sessionStorage.setItem("diffgraph.clientId", this.clientId);
    this.socket = null;
    this.connected = false;
    this.wsAvailable = true;
    this._retry = 0;
  }
  url(path) { return `${this.base}${path}`; }
  async fetchJson(path, init = {}) {
    const res = await fetch(this.url(path), init);
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = { error: { message: text } }; }
    if (!res.ok) { const e = new Error(body?.error?.message || `${res.status} ${res.statusText}`); e.status = res.status; e.body = body; throw e; }
    return body;
  }
  objectInfo() { return this.fetchJson("/object_info"); }
  queuePrompt(prompt, workflow, front = false) {
    const body = { prompt, client_id: this.clientId, extra_data: { extra_pnginfo: { workflow } } };
    if (front) body.front = true;
    return this.fetchJson("/prompt", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  }
  getQueue() { return this.fetchJson("/queue"); }
  getHistory(max = 50) { return this.fetchJson(`/history?max_items=${max}`); }
  getHistoryItem(id) { return this.fetchJson(`/history/${encodeURIComponent(id)}`); }
  post(path, body) {
    return this.fetchJson(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  }
  deleteQueueItems(ids) { return this.post("/queue", { delete: ids }); }
  clearQueue() { return this.post("/queue", { clear: true }); }
  deleteHistory(ids) { return this.post("/history", ids ? { delete: ids } : { clear: true }); }
  interrupt() { return this.post("/interrupt"); }
  async listWorkflows() { return this.fetchJson("/workflows"); }
  async getWorkflow(name) { return this.fetchJson(`/workflows/${encodeURIComponent(name)}`); }
  async uploadImage(file, overwrite = false) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", "input");
    if (overwrite) form.append("overwrite", "true");
    return this.fetchJson("/upload/image", { method: "POST", body: form });
  }
  viewUrl(image) {
    const q = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output" });
    return this.url(`/view?${q}`);
  }
  // Connects /ws and reconnects with a growing delay; emits "status", "executing", "progress",
  // "executed", "execution_*", "b_preview" (a Blob) and "connection" ({connected}).
  connect() {
    const wsUrl = `${this.base.replace(/^http/, "ws")}/ws?clientId=${this.clientId}`;
    let socket;
    try { socket = new WebSocket(wsUrl); } catch { this._scheduleReconnect(); return; }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      this._retry = 0; this.connected = true;
      this.dispatchEvent(new CustomEvent("connection", { detail: { connected: true } }));
    };
    socket.onclose = () => {
      const was = this.connected; this.connected = false;
      if (was) this.dispatchEvent(new CustomEvent("connection", { detail: { connected: false } }));
      this._scheduleReconnect();
    };
    socket.onerror = () => {};
    socket.onmessage = (ev) => {
      if (ev.data instanceof ArrayBuffer) {
        // Binary frames: 4-byte big-endian event type (1 = preview image), 4-byte image format
        // (1 = JPEG, 2 = PNG), then the image bytes (ComfyUI's protocol).
        const view = new DataView(ev.data);
        if (view.getUint32(0) === 1) {
          const mime = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
          this.dispatchEvent(new CustomEvent("b_preview", { detail: new Blob([ev.data.slice(8)], { type: mime }) }));
        }
        return;
      }
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === "status" && msg.data?.sid) { this.clientId = msg.data.sid; sessionStorage.setItem("diffgraph.clientId", this.clientId); }
      this.dispatchEvent(new CustomEvent(msg.type, { detail: msg.data }));
    };
  }
  _scheduleReconnect() {
    const delay = Math.min(500 * 2 ** this._retry++, 5000);
    setTimeout(() => this.connect(), delay);
  }
}
