// The application: graph state, view transform, selection, editing actions and undo/redo.
import { Graph, MODE_ALWAYS, MODE_BYPASSED, MODE_MUTED } from "./graph.js";
import { nodeBounds } from "./geometry.js";
import { showMenu, showSearch, editValue } from "./menus.js";
import { Renderer } from "./render.js";
import { typesCompatible, SchemaSet, UI_ONLY_TYPES } from "./schema.js";
import { refreshInputImage } from "./widgets.js";

const CLIPBOARD_KEY = "diffgraph.clipboard";
// The lowest zoom at which render.js draws widgets and labels is 0.45; opened workflows start above it.
const READABLE_SCALE = 0.6;

export class App extends EventTarget {
  constructor(canvas, api) {
    super();
    this.canvas = canvas;
    this.api = api;
    this.graph = new Graph();
    this.schemas = new SchemaSet();
    this.view = { scale: 1, offset: [0, 0] };
    this.selected = new Set();
    this.selectedGroup = null;
    this.zorder = [];
    this.nodeErrors = new Map(); // node id -> {message, inputs: Set}
    this.executing = null;
    this.progress = null;
    this.linkDrag = null;
    this.boxSelect = null;
    this.mouse = [0, 0];
    this.undoStack = []; this.redoStack = [];
    this.lastSnapshot = null;
    this.renderer = new Renderer(this, canvas);
    this.menuItemHooks = []; // extensions: (node) => [{label, action}]
  }
  setDirty() { this.renderer.setDirty(); }
  // --- coordinates --------------------------------------------------------------------------
  toGraph(sx, sy) { return [sx / this.view.scale - this.view.offset[0], sy / this.view.scale - this.view.offset[1]]; }
  toScreen(gx, gy) { return [(gx + this.view.offset[0]) * this.view.scale, (gy + this.view.offset[1]) * this.view.scale]; }
  toScreenRect(r) {
    const c = this.canvas.getBoundingClientRect();
    const [x, y] = this.toScreen(r[0], r[1]);
    return [x + c.left, y + c.top, r[2] * this.view.scale, r[3] * this.view.scale];
  }
  zoomAt(sx, sy, factor) {
    const [gx, gy] = this.toGraph(sx, sy);
    this.view.scale = Math.min(4, Math.max(0.1, this.view.scale * factor));
    this.view.offset = [sx / this.view.scale - gx, sy / this.view.scale - gy];
    this.setDirty();
  }
  // `readable`: never below the zoom where widgets and labels are drawn (render.js LOW_DETAIL_SCALE);
  // a graph too big for that opens at its top-left corner instead of as an unreadable overview.
  fitView({ readable = false } = {}) {
    const nodes = [...this.graph.nodes.values()];
    const r = this.canvas.getBoundingClientRect();
    if (!nodes.length) { this.view = { scale: 1, offset: [0, 0] }; this.setDirty(); return; }
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of nodes) { const b = nodeBounds(n); x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]); }
    for (const g of this.graph.groups) { const b = g.bounding; x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]); }
    const pad = 40;
    const fit = Math.min(2, Math.max(0.1, Math.min((r.width - 2 * pad) / (x1 - x0), (r.height - 2 * pad) / (y1 - y0))));
    if (readable && fit < READABLE_SCALE) {
      this.view = { scale: READABLE_SCALE, offset: [pad / READABLE_SCALE - x0, pad / READABLE_SCALE - y0] };
    } else {
      const scale = readable ? Math.min(fit, 1) : fit;
      this.view = { scale, offset: [(r.width / scale - (x1 - x0)) / 2 - x0, (r.height / scale - (y1 - y0)) / 2 - y0] };
    }
    this.setDirty();
  }
  // --- z order and selection ------------------------------------------------------------------
  drawOrder() {
    const ids = this.graph.nodes;
    if (this.zorder.length !== ids.size || this.zorder.some((id) => !ids.has(id))) {
      const keep = this.zorder.filter((id) => ids.has(id));
      const set = new Set(keep);
      for (const id of ids.keys()) if (!set.has(id)) keep.push(id);
      this.zorder = keep;
    }
    return this.zorder;
  }
  bringToFront(node) { this.zorder = this.drawOrder().filter((id) => id !== node.id); this.zorder.push(node.id); }
  select(node, add = false) { if (!add) this.selected.clear(); this.selected.add(node.id); this.setDirty(); }
  toggleSelect(node) { if (this.selected.has(node.id)) this.selected.delete(node.id); else this.selected.add(node.id); this.setDirty(); }
  clearSelection() { this.selected.clear(); this.selectedGroup = null; this.setDirty(); }
  selectedNodes() { return [...this.selected].map((id) => this.graph.nodes.get(id)).filter(Boolean); }
  // --- change tracking: every completed edit pushes a snapshot for undo, and persists ----------
  snapshot() { return JSON.stringify(this.graph.serialize()); }
  resetHistory() { this.undoStack = []; this.redoStack = []; this.lastSnapshot = this.snapshot(); }
  changed(commit = true) {
    this.setDirty();
    if (!commit) return;
    const snap = this.snapshot();
    if (snap === this.lastSnapshot) return;
    if (this.lastSnapshot !== null) { this.undoStack.push(this.lastSnapshot); if (this.undoStack.length > 100) this.undoStack.shift(); }
    this.redoStack = [];
    this.lastSnapshot = snap;
    this.dispatchEvent(new Event("graphchange"));
  }
  undo() {
    if (!this.undoStack.length) return;
    this.redoStack.push(this.lastSnapshot);
    this.lastSnapshot = this.undoStack.pop();
    this.restore(this.lastSnapshot);
  }
  redo() {
    if (!this.redoStack.length) return;
    this.undoStack.push(this.lastSnapshot);
    this.lastSnapshot = this.redoStack.pop();
    this.restore(this.lastSnapshot);
  }
  restore(snap) {
    this.reloadKeepingOutputs(JSON.parse(snap));
    this.selected = new Set([...this.selected].filter((id) => this.graph.nodes.has(id)));
    this.dispatchEvent(new Event("graphchange"));
    this.setDirty();
  }
  afterLoad() {
    for (const n of this.graph.nodes.values()) {
      refreshInputImage(this, n);
      if (n.missing) { n.missingReason = this.missingReason(n); n.fitSize(); }
    }
  }
  // Why a node type is unknown: the import error of the pack that should provide it (GET
  // /diffgraph/plugins), matched by the pack the file names (cnr_id / aux_id) or the pack's node list;
  // otherwise every pack that failed to load, since one of them may be the provider.
  missingReason(node) {
    const packs = this.pluginPacks || [];
    const failed = packs.filter((p) => p.error || Object.keys(p.node_errors || {}).length);
    const wanted = [node.properties?.cnr_id, String(node.properties?.aux_id || "").split("/").pop()].filter(Boolean).map((x) => String(x).toLowerCase());
    const line = (p) => p.node_errors?.[node.type] ? `${p.name}: ${p.node_errors[node.type]}` : `pack ${p.name} failed to load: ${p.error || Object.values(p.node_errors || {})[0]}`;
    const own = failed.filter((p) => wanted.includes(String(p.name).toLowerCase()) || (p.nodes || []).includes(node.type) || p.node_errors?.[node.type]);
    const lines = (own.length ? own : failed).map(line);
    return [`Node type ${node.type} is not installed.`, ...lines].join("\n");
  }
  async loadPluginPacks() {
    try { this.pluginPacks = (await this.api.fetchJson("/diffgraph/plugins"))?.packs || []; } catch { this.pluginPacks = []; }
  }
  // Undo/redo and paste rebuild the graph from a document; output images stay on the nodes.
  reloadKeepingOutputs(doc) {
    const kept = new Map([...this.graph.nodes.values()].filter((n) => n.imageUrls && !n.hasImageWidget).map((n) => [n.id, [n.images, n.imageUrls]]));
    this.graph.load(doc, this.schemas);
    this.afterLoad();
    for (const [id, [images, urls]] of kept) {
      const n = this.graph.nodes.get(id);
      if (n) { n.images = images; n.imageUrls = urls; }
    }
  }
  // Another workflow: errors of the previous one go (the "load" event tells the panels), and the view
  // fits the graph at a zoom where widgets are readable.
  loadDocument(doc, { fit = true } = {}) {
    this.graph.load(doc, this.schemas);
    this.afterLoad();
    this.selected.clear(); this.nodeErrors.clear(); this.zorder = [];
    this.workflowName = null;
    this.dispatchEvent(new Event("load"));
    const ds = doc.extra?.ds;
    if (ds && Array.isArray(ds.offset) && !fit) this.view = { scale: ds.scale || 1, offset: [...ds.offset] };
    else this.fitView({ readable: true });
    this.changed();
    this.setDirty();
  }
  // --- editing actions --------------------------------------------------------------------------
  addNode(type, pos = this.mouse) {
    const node = this.graph.createNode(type, this.schemas);
    node.pos = [pos[0], pos[1]];
    refreshInputImage(this, node);
    this.select(node);
    this.changed();
    return node;
  }
  deleteSelected() {
    for (const n of this.selectedNodes()) this.graph.removeNode(n);
    if (this.selectedGroup) { this.graph.groups = this.graph.groups.filter((g) => g !== this.selectedGroup); this.selectedGroup = null; }
    this.selected.clear(); this.changed();
  }
  setMode(nodes, mode) {
    const all = nodes.every((n) => n.mode === mode);
    for (const n of nodes) n.mode = all ? MODE_ALWAYS : mode;
    this.changed();
  }
  toggleCollapse(nodes) { for (const n of nodes) n.collapsed = !n.collapsed; this.changed(); }
  copySelection() {
    const nodes = this.selectedNodes();
    if (!nodes.length) return null;
    const ids = new Set(nodes.map((n) => n.id));
    const doc = this.graph.serialize();
    const clip = {
      nodes: doc.nodes.filter((n) => ids.has(n.id)),
      links: doc.links.filter((l) => ids.has(l[1]) && ids.has(l[3])),
    };
    const text = JSON.stringify({ diffgraphClipboard: clip });
    localStorage.setItem(CLIPBOARD_KEY, text);
    navigator.clipboard?.writeText?.(text).catch(() => {});
    return clip;
  }
  // Pastes at the mouse with fresh ids; links inside the copied set are kept.
  paste(clip = null) {
    if (!clip) {
      try { clip = JSON.parse(localStorage.getItem(CLIPBOARD_KEY) || "null")?.diffgraphClipboard; } catch { clip = null; }
    }
    if (!clip || !clip.nodes?.length) return;
    const minX = Math.min(...clip.nodes.map((n) => n.pos[0])), minY = Math.min(...clip.nodes.map((n) => n.pos[1]));
    const idMap = new Map(), linkMap = new Map();
    for (const l of clip.links) linkMap.set(l[0], ++this.graph.lastLinkId);
    const nodes = clip.nodes.map((raw) => {
      const id = ++this.graph.lastNodeId; idMap.set(raw.id, id);
      return { ...structuredClone(raw), id, pos: [raw.pos[0] - minX + this.mouse[0], raw.pos[1] - minY + this.mouse[1]],
        inputs: (raw.inputs || []).map((i) => ({ ...i, link: linkMap.get(i.link) ?? null })),
        outputs: (raw.outputs || []).map((o) => ({ ...o, links: (o.links || []).map((l) => linkMap.get(l)).filter((l) => l != null) })) };
    });
    const links = clip.links.map((l) => [linkMap.get(l[0]), idMap.get(l[1]), l[2], idMap.get(l[3]), l[4], l[5]]);
    const doc = this.graph.serialize();
    doc.nodes.push(...nodes); doc.links.push(...links);
    doc.last_node_id = this.graph.lastNodeId; doc.last_link_id = this.graph.lastLinkId;
    this.reloadKeepingOutputs(doc);
    this.selected = new Set(nodes.map((n) => n.id));
    this.changed();
  }
  duplicateSelected() {
    const clip = this.copySelection();
    if (clip) { const b = nodeBounds(this.selectedNodes()[0]); this.mouse = [b[0] + 30, b[1] + 30 + 26]; this.paste(clip); }
  }
  groupSelected() {
    const nodes = this.selectedNodes();
    let rect;
    if (nodes.length) {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of nodes) { const b = nodeBounds(n); x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[0] + b[2]); y1 = Math.max(y1, b[1] + b[3]); }
      rect = [x0 - 10, y0 - 44, x1 - x0 + 20, y1 - y0 + 54];
    } else rect = [this.mouse[0], this.mouse[1], 400, 300];
    this.graph.groups.push({ title: "Group", bounding: rect, color: "#3f789e" });
    this.changed();
  }
  renameNode(node) {
    const r = this.toScreenRect([node.pos[0], node.pos[1] - 26, node.size[0], 26]);
    editValue(r, node.title, { onCommit: (s) => { node.title = s; this.changed(); } });
  }
  renameGroup(g) {
    editValue(this.toScreenRect([g.bounding[0], g.bounding[1], g.bounding[2], 34]), g.title, { onCommit: (s) => { g.title = s; this.changed(); } });
  }
  // --- menus and search ---------------------------------------------------------------------------
  openSearch(sx, sy, { fromSlot = null } = {}) {
    const pos = this.toGraph(sx, sy);
    let schemas = this.schemas.all().filter((s) => !s.info.deprecated);
    if (fromSlot) {
      schemas = schemas.filter((s) => fromSlot.fromOutput
        ? s.inputs.some((i) => !i.isWidget && typesCompatible(fromSlot.type, i.type))
        : s.outputs.some((o) => typesCompatible(o.type, fromSlot.type)));
    }
    const options = schemas.map((s) => ({ label: s.displayName, sub: s.category, value: s.name }));
    if (!fromSlot) options.push({ label: "Reroute", sub: "utils", value: "Reroute" }, { label: "Note", sub: "utils", value: "Note" });
    const rect = this.canvas.getBoundingClientRect();
    showSearch(options, sx + rect.left, sy + rect.top, (type) => {
      const node = this.graph.createNode(type, this.schemas);
      node.pos = pos;
      refreshInputImage(this, node);
      if (fromSlot) {
        if (fromSlot.fromOutput) {
          const i = node.inputs.findIndex((x) => typesCompatible(fromSlot.type, x.type));
          if (i >= 0) this.graph.connect(fromSlot.node, fromSlot.slot, node, i);
        } else {
          const o = node.outputs.findIndex((x) => typesCompatible(x.type, fromSlot.type));
          node.pos = [pos[0] - node.size[0], pos[1]];
          if (o >= 0) this.graph.connect(node, o, fromSlot.node, fromSlot.slot);
        }
      }
      this.select(node);
      this.changed();
    });
  }
  categoryTree() {
    const root = new Map();
    for (const s of this.schemas.all()) {
      let level = root;
      for (const part of s.category.split("/")) {
        if (!level.has(part)) level.set(part, new Map());
        level = level.get(part);
      }
      level.set(`\u0000${s.name}`, s);
    }
    const toItems = (level) => [...level.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) =>
      v instanceof Map ? { label: k, submenu: () => toItems(v) } : { label: v.displayName, action: () => this.addNode(v.name) });
    return toItems(root);
  }
  canvasMenu(x, y) {
    showMenu([
      { label: "Add Node", submenu: () => this.categoryTree() },
      { label: "Search nodes…", action: () => { const r = this.canvas.getBoundingClientRect(); this.openSearch(x - r.left, y - r.top); } },
      { label: "Add Group", action: () => this.groupSelected() },
      { label: "Add Reroute", action: () => this.addNode("Reroute") },
      { label: "Add Note", action: () => this.addNode("Note") },
      null,
      { label: "Paste", action: () => this.paste() },
      { label: "Fit view", action: () => this.fitView() },
    ], x, y);
  }
  groupMenu(g, x, y) {
    showMenu([
      { label: "Edit title", action: () => this.renameGroup(g) },
      { label: "Color", submenu: ["#3f789e", "#a1309b", "#b06634", "#8a8", "#88a", "#444"].map((c) => ({ label: c, action: () => { g.color = c; this.changed(); } })) },
      { label: "Remove group", action: () => { this.graph.groups = this.graph.groups.filter((x) => x !== g); this.changed(); } },
    ], x, y);
  }
  nodeMenu(node, x, y) {
    const nodes = this.selectedNodes();
    const widgets = node.widgets.filter((w) => w.spec && !w.control && w.kind !== "button");
    const items = [
      { label: "Title", action: () => this.renameNode(node) },
      { label: node.collapsed ? "Expand" : "Collapse", action: () => this.toggleCollapse(nodes) },
      { label: node.mode === MODE_BYPASSED ? "Remove bypass" : "Bypass", action: () => this.setMode(nodes, MODE_BYPASSED) },
      { label: node.mode === MODE_MUTED ? "Unmute" : "Mute", action: () => this.setMode(nodes, MODE_MUTED) },
    ];
    if (widgets.some((w) => !w.converted)) {
      items.push({ label: "Convert widget to input", submenu: () => widgets.filter((w) => !w.converted).map((w) => ({ label: `Convert ${w.name} to input`, action: () => { this.graph.convertWidgetToInput(node, w.name); this.changed(); } })) });
    }
    if (widgets.some((w) => w.converted)) {
      items.push({ label: "Convert input to widget", submenu: () => widgets.filter((w) => w.converted).map((w) => ({ label: `Convert ${w.name} to widget`, action: () => { this.graph.convertInputToWidget(node, w.name); this.changed(); } })) });
    }
    for (const hook of this.menuItemHooks) { try { items.push(...(hook(node) || [])); } catch (e) { console.warn("extension menu hook failed", e); } }
    items.push(null,
      { label: "Clone", action: () => this.duplicateSelected() },
      { label: "Copy", action: () => this.copySelection() },
      { label: "Remove", action: () => this.deleteSelected() });
    if (UI_ONLY_TYPES.has(node.type)) items.splice(2, 2);
    showMenu(items, x, y);
  }
  toast(message, error = false) { this.dispatchEvent(new CustomEvent("toast", { detail: { message, error } })); }
  async loadSchemas() { this.schemas = new SchemaSet(await this.api.objectInfo()); }
}
