// The graph model (nodes, links, groups) and ComfyUI UI-format (version 0.4) serialization.
import { CONTROL_VALUES, controlMode, hasControl, savedWidgetValues } from "./schema.js";

export const MODE_ALWAYS = 0, MODE_MUTED = 2, MODE_BYPASSED = 4;
export const TITLE_H = 26, SLOT_H = 20, WIDGET_H = 22, TEXTAREA_H = 76, NODE_MIN_W = 200;

const MISSING_W = 340;
let measure = null;
function textWidth(text, font = "12px sans-serif") {
  measure ??= document.createElement("canvas").getContext("2d");
  measure.font = font;
  return measure.measureText(String(text)).width;
}
// The node width at which render.js drawWidget shows the whole label: the value keeps at most 120 px
// (longer ones are cut), and the label never needs more than the 55 % that drawWidget leaves it.
function widgetWidth(w) {
  if (w.kind === "textarea" || w.kind === "button") return 0;
  const toggle = w.kind === "toggle" ? 20 : 0;
  const pad = w.kind === "number" || w.kind === "combo" ? 20 : 10;
  const label = textWidth(w.name);
  const value = Math.min(textWidth(w.kind === "toggle" ? "false" : String(w.value ?? "")) + 8, 120) + toggle;
  const avail = Math.max(label + value, (label + toggle) / 0.55) + 6;
  return avail + pad * 2 + 10 + 20;
}

export class GraphNode {
  constructor(id, type) {
    this.id = id;
    this.type = type;
    this.title = type;
    this.pos = [0, 0];
    this.size = [NODE_MIN_W, 60];
    this.mode = MODE_ALWAYS;
    this.collapsed = false;
    this.inputs = [];   // {name, type, link, widget?: {name}}
    this.outputs = [];  // {name, type, links: []}
    this.widgets = [];  // {name, kind, value, spec, converted?}
    this.properties = { "Node name for S&R": type };
    this.missing = false;
    this.raw = null;    // original document entry for nodes we cannot rebuild (unknown types)
    this.images = [];   // output images [{filename, subfolder, type}]
    this.preview = null; // live preview object URL
    this.color = undefined; this.bgcolor = undefined;
  }
  widget(name) { return this.widgets.find((w) => w.name === name); }
  visibleWidgets() { return this.widgets.filter((w) => !w.converted); }
  // Wide enough that no title, socket label or widget label is cut at the default size.
  computeSize() {
    const rows = Math.max(this.inputs.length, this.outputs.length);
    let h = rows * SLOT_H + 6;
    for (const w of this.visibleWidgets()) h += (w.kind === "textarea" ? TEXTAREA_H : WIDGET_H) + 4;
    if (this.images.length || this.preview || this.hasImageWidget) h += 200;
    let w = Math.max(NODE_MIN_W, textWidth(this.title, "bold 13px sans-serif") + 60);
    for (let i = 0; i < rows; i++) w = Math.max(w, textWidth(this.inputs[i]?.name ?? "") + textWidth(this.outputs[i]?.name ?? "") + 56);
    for (const widget of this.visibleWidgets()) w = Math.max(w, widgetWidth(widget));
    if (this.missingReason) {
      w = Math.max(w, MISSING_W);
      const lines = this.missingReason.split("\n").reduce((n, para) => n + Math.ceil((textWidth(para) + 1) / (MISSING_W - 40)), 0);
      h += lines * 14 + 16;
    }
    return [Math.ceil(w), Math.max(h, 30)];
  }
  fitSize() {
    const [w, h] = this.computeSize();
    this.size = [Math.max(this.size[0], w), Math.max(this.size[1], h)];
  }
}

export class Graph {
  constructor() { this.clear(); }
  clear() {
    this.nodes = new Map();
    this.links = new Map(); // id -> {id, origin_id, origin_slot, target_id, target_slot, type}
    this.groups = [];       // {title, bounding: [x,y,w,h], color}
    this.lastNodeId = 0;
    this.lastLinkId = 0;
    this.extra = {};
  }
  // --- building ---------------------------------------------------------------------------
  createNode(type, schemas, id = null) {
    const node = new GraphNode(id ?? ++this.lastNodeId, type);
    this.lastNodeId = Math.max(this.lastNodeId, node.id);
    const schema = schemas.get(type);
    if (type === "Reroute") {
      node.title = "";
      node.inputs = [{ name: "", type: "*", link: null }];
      node.outputs = [{ name: "", type: "*", links: [] }];
      node.size = [75, 26];
    } else if (type === "Note" || type === "MarkdownNote") {
      node.title = "Note";
      node.widgets = [{ name: "text", kind: "textarea", value: "", spec: { type: "STRING", options: {} } }];
    } else if (type === "PrimitiveNode") {
      node.title = "Primitive";
      node.outputs = [{ name: "connect to widget input", type: "*", links: [] }];
    } else if (schema) {
      node.title = schema.displayName;
      node.description = schema.description;
      for (const spec of schema.inputs) if (!spec.isWidget) node.inputs.push({ name: spec.name, type: spec.type, link: null });
      // Widgets in widgets_values order, so that saving writes the layout ComfyUI (and ui_widgets.py) reads.
      for (const slot of schema.widgetLayout()) {
        if (slot.kind === "input") node.widgets.push(makeWidget(slot.spec));
        else if (slot.kind === "control") node.widgets.push(controlWidget("fixed"));
        else {
          node.hasImageWidget = true;
          node.widgets.push({ name: "upload", kind: "button", value: "image", upload: slot.spec.name, spec: slot.spec });
        }
      }
      node.outputs = schema.outputs.map((o) => ({ name: o.name, type: o.type, links: [] }));
    } else {
      node.missing = true;
    }
    if (type !== "Reroute") node.size = node.computeSize();
    node.defaultTitle = node.title;
    this.nodes.set(node.id, node);
    return node;
  }
  removeNode(node) {
    for (const inp of node.inputs) if (inp.link != null) this.removeLink(inp.link);
    for (const out of node.outputs) for (const l of [...out.links]) this.removeLink(l);
    this.nodes.delete(node.id);
  }
  connect(origin, originSlot, target, targetSlot) {
    const input = target.inputs[targetSlot];
    if (input.link != null) this.removeLink(input.link);
    const type = origin.outputs[originSlot].type;
    const link = { id: ++this.lastLinkId, origin_id: origin.id, origin_slot: originSlot,
      target_id: target.id, target_slot: targetSlot, type };
    this.links.set(link.id, link);
    input.link = link.id;
    origin.outputs[originSlot].links.push(link.id);
    if (origin.type === "Reroute" || target.type === "Reroute") this.updateRerouteTypes();
    return link;
  }
  removeLink(id) {
    const link = this.links.get(id);
    if (!link) return;
    this.links.delete(id);
    const t = this.nodes.get(link.target_id), o = this.nodes.get(link.origin_id);
    if (t && t.inputs[link.target_slot]?.link === id) t.inputs[link.target_slot].link = null;
    if (o && o.outputs[link.origin_slot]) {
      o.outputs[link.origin_slot].links = o.outputs[link.origin_slot].links.filter((l) => l !== id);
    }
  }
  // A reroute takes the type of whatever feeds it, so that type checking sees through it.
  updateRerouteTypes() {
    for (const node of this.nodes.values()) {
      if (node.type !== "Reroute") continue;
      let type = "*", cur = node, guard = 0;
      while (cur && cur.type === "Reroute" && guard++ < 1000) {
        const l = this.links.get(cur.inputs[0].link);
        if (!l) break;
        const o = this.nodes.get(l.origin_id);
        if (o && o.type !== "Reroute") { type = o.outputs[l.origin_slot]?.type ?? "*"; break; }
        cur = o;
      }
      node.outputs[0].type = type;
      node.inputs[0].type = type;
    }
  }
  // Convert a widget into an input socket (ComfyUI keeps its value in widgets_values).
  convertWidgetToInput(node, name) {
    const w = node.widget(name);
    if (!w || w.converted || !w.spec) return false;
    w.converted = true;
    node.inputs.push({ name, type: w.spec.type, link: null, widget: { name } });
    node.size = node.computeSize();
    return true;
  }
  convertInputToWidget(node, name) {
    const idx = node.inputs.findIndex((i) => i.widget && i.widget.name === name);
    if (idx < 0) return false;
    if (node.inputs[idx].link != null) this.removeLink(node.inputs[idx].link);
    this.removeInputSlot(node, idx);
    node.widget(name).converted = false;
    node.size = node.computeSize();
    return true;
  }
  removeInputSlot(node, idx) {
    node.inputs.splice(idx, 1);
    for (let i = idx; i < node.inputs.length; i++) {
      const l = this.links.get(node.inputs[i].link);
      if (l) l.target_slot = i;
    }
  }
  // A PrimitiveNode shows the widget it feeds (same spec), plus its control value for seeds.
  setupPrimitive(node) {
    const values = node.primitiveValues || node.widgets.map((w) => w.value);
    const link = this.links.get(node.outputs[0]?.links?.[0]);
    const target = link && this.nodes.get(link.target_id);
    const name = node.outputs[0]?.widget?.name ?? target?.inputs[link.target_slot]?.widget?.name;
    const spec = target?.widget(name)?.spec;
    node.widgets = [];
    if (spec) {
      node.widgets.push({ ...makeWidget(spec), name: "value", value: values[0] ?? spec.options.default });
      if (hasControl(spec) || CONTROL_VALUES.includes(values[1]) || typeof values[1] === "boolean") {
        node.widgets.push(controlWidget(controlMode(values[1])));
      }
      node.size = [Math.max(node.size[0], 200), Math.max(node.size[1], node.computeSize()[1])];
    } else {
      node.widgets = values.map((v, i) => ({ name: `value${i}`, kind: "text", value: v, spec: null, raw: true }));
    }
  }
  // --- UI format ----------------------------------------------------------------------------
  serialize(view = null) {
    const nodes = [...this.nodes.values()].map((n, order) => serializeNode(n, order));
    const links = [...this.links.values()].map((l) => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]);
    const extra = { ...this.extra };
    if (view) extra.ds = { scale: view.scale, offset: [view.offset[0], view.offset[1]] };
    return {
      last_node_id: this.lastNodeId, last_link_id: this.lastLinkId, nodes, links,
      groups: this.groups.map((g) => ({ title: g.title, bounding: [...g.bounding], color: g.color, font_size: 24, flags: {} })),
      config: {}, extra, version: 0.4,
    };
  }
  load(doc, schemas) {
    this.clear();
    const nodeList = Array.isArray(doc.nodes) ? doc.nodes : [];
    for (const raw of nodeList) {
      const node = this.createNode(raw.type, schemas, Number(raw.id));
      applyNodeDocument(node, raw, schemas.get(raw.type));
    }
    for (const raw of doc.links || []) {
      if (!raw || typeof raw !== "object") continue; // ComfyUI's canvas leaves nulls where links were removed
      const l = Array.isArray(raw)
        ? { id: raw[0], origin_id: raw[1], origin_slot: raw[2], target_id: raw[3], target_slot: raw[4], type: raw[5] ?? "*" }
        : { id: raw.id, origin_id: raw.origin_id, origin_slot: raw.origin_slot, target_id: raw.target_id, target_slot: raw.target_slot, type: raw.type ?? "*" };
      this.links.set(Number(l.id), l);
      this.lastLinkId = Math.max(this.lastLinkId, Number(l.id));
    }
    this.lastNodeId = Math.max(this.lastNodeId, Number(doc.last_node_id) || 0);
    this.lastLinkId = Math.max(this.lastLinkId, Number(doc.last_link_id) || 0);
    this.groups = (doc.groups || []).map((g) => ({ title: g.title ?? "Group", bounding: [...(g.bounding || [0, 0, 300, 200])], color: g.color || "#3f789e" }));
    this.extra = { ...(doc.extra || {}) };
    for (const node of this.nodes.values()) if (node.type === "PrimitiveNode") this.setupPrimitive(node);
    // Our socket order may differ from the file's (converted widgets): re-point links at our slots.
    for (const node of this.nodes.values()) {
      node.inputs.forEach((inp, slot) => { const l = this.links.get(inp.link); if (l) l.target_slot = slot; });
    }
    this.updateRerouteTypes();
  }
}

function controlWidget(value) {
  return { name: "control_after_generate", kind: "combo", value, control: true, spec: { type: "COMBO", choices: CONTROL_VALUES, options: {} } };
}

function makeWidget(spec) {
  const o = spec.options;
  let kind, value = o.default;
  switch (spec.type) {
    case "INT": case "FLOAT": kind = "number"; value ??= o.min ?? 0; break;
    case "BOOLEAN": kind = "toggle"; value ??= false; break;
    case "STRING": kind = o.multiline ? "textarea" : "text"; value ??= ""; break;
    default: kind = "combo"; value ??= (spec.choices || [])[0] ?? ""; break;
  }
  return { name: spec.name, kind, value, spec };
}

function serializeNode(n, order) {
  if (n.missing && n.raw) return { ...n.raw, pos: [...n.pos], size: [...n.size], mode: n.mode };
  const out = {
    id: n.id, type: n.type, pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
    flags: n.collapsed ? { collapsed: true } : {}, order, mode: n.mode,
    inputs: n.inputs.map((i) => {
      const s = { name: i.name, type: i.type, link: i.link ?? null };
      if (i.widget) s.widget = { name: i.widget.name };
      return s;
    }),
    outputs: n.outputs.map((o, slot) => {
      const s = { name: o.name, type: o.type, links: o.links.length ? [...o.links] : null, slot_index: slot };
      if (o.widget) s.widget = { ...o.widget };
      return s;
    }),
    properties: { ...n.properties },
    widgets_values: n.widgets.map((w) => w.value),
  };
  if (n.title !== n.defaultTitle && n.title) out.title = n.title;
  if (n.color) out.color = n.color;
  if (n.bgcolor) out.bgcolor = n.bgcolor;
  return out;
}

function applyNodeDocument(node, raw, schema) {
  node.defaultTitle = node.title;
  if (typeof raw.title === "string") node.title = raw.title;
  node.pos = [Number(raw.pos?.[0] ?? raw.pos?.["0"] ?? 0), Number(raw.pos?.[1] ?? raw.pos?.["1"] ?? 0)];
  node.mode = raw.mode ?? 0;
  node.collapsed = !!raw.flags?.collapsed;
  node.color = raw.color; node.bgcolor = raw.bgcolor;
  node.properties = { ...node.properties, ...(raw.properties || {}) };
  if (node.missing || node.type === "PrimitiveNode") {
    node.raw = node.missing ? structuredClone(raw) : null;
    node.inputs = (raw.inputs || []).map((i) => ({ ...i, link: i.link ?? null }));
    node.outputs = (raw.outputs || []).map((o) => ({ name: o.name, type: o.type, links: [...(o.links || [])], ...(o.widget ? { widget: { ...o.widget } } : {}) }));
    if (node.type === "PrimitiveNode") node.primitiveValues = raw.widgets_values || [];
    node.size = raw.size ? [Number(raw.size[0] ?? raw.size["0"]), Number(raw.size[1] ?? raw.size["1"])] : node.computeSize();
    return;
  }
  // widgets_values: a list in layout order (an older file may omit control_after_generate), or a dict.
  const { list, named } = savedWidgetValues(raw);
  if (named) {
    for (const w of node.widgets) if (w.name in named) w.value = w.control ? controlMode(named[w.name]) : named[w.name];
  } else if (list.length && schema) {
    // node.widgets follow the schema's full layout, so aligned slot indexes are widget indexes.
    for (const [i, value] of schema.alignWidgetValues(list)) {
      const w = node.widgets[i];
      if (w) w.value = w.control ? controlMode(value) : value;
    }
  }
  // Inputs: sockets keep their order; inputs carrying `widget` are converted widgets.
  for (const [slot, ri] of (raw.inputs || []).entries()) {
    let target;
    if (ri.widget && ri.widget.name) {
      const w = node.widget(ri.widget.name);
      if (!w) continue;
      if (!w.converted) { w.converted = true; node.inputs.push({ name: ri.name, type: ri.type, link: null, widget: { name: w.name } }); }
      target = node.inputs[node.inputs.length - 1];
    } else {
      target = node.inputs.find((i) => i.name === ri.name && !i.widget) ?? node.inputs[slot];
    }
    if (target) target.link = ri.link ?? null;
  }
  (raw.outputs || []).forEach((ro, slot) => {
    const target = node.outputs[slot];
    if (target) target.links = [...(ro.links || [])];
  });
  const fit = node.computeSize();
  node.size = raw.size ? [Math.max(Number(raw.size[0] ?? raw.size["0"]), 50), Math.max(Number(raw.size[1] ?? raw.size["1"]), 20)] : fit;
  if (node.type !== "Reroute") node.size = [Math.max(node.size[0], fit[0] * 0.6), Math.max(node.size[1], fit[1])];
}
