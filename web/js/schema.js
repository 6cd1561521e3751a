// Node schemas from /object_info, and the widget layout rules shared with engine/graph/ui_format.py.

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
export const CONTROL_VALUES = ["fixed", "increment", "decrement", "randomize"];
export const SEED_NAMES = new Set(["seed", "noise_seed"]);
export const UI_ONLY_TYPES = new Set(["Reroute", "PrimitiveNode", "Note", "MarkdownNote"]);

// A spec is ["TYPE", {opts}] or [["a","b"], {opts}] (legacy combo) or ["COMBO", {options: [...]}].
export function parseInputSpec(name, spec, optional) {
  const raw = Array.isArray(spec) ? spec : [spec];
  let type = raw[0];
  const options = (raw[1] && typeof raw[1] === "object") ? raw[1] : {};
  let choices = null;
  if (Array.isArray(type)) { choices = type; type = "COMBO"; }
  else if (type === "COMBO") { choices = options.options || []; }
  const isWidget = WIDGET_TYPES.has(type) && !options.forceInput && !options.rawLink;
  return { name, type, options, choices, optional, isWidget };
}

export class NodeSchema {
  constructor(name, info) {
    this.name = name;
    this.info = info;
    this.displayName = info.display_name || name;
    this.category = info.category || "other";
    this.description = info.description || "";
    this.outputNode = !!info.output_node;
    const inp = info.input || {};
    const order = info.input_order || {};
    this.inputs = [];
    for (const section of ["required", "optional"]) {
      const specs = inp[section] || {};
      const names = order[section] || Object.keys(specs);
      for (const n of names) if (n in specs) this.inputs.push(parseInputSpec(n, specs[n], section === "optional"));
    }
    this.outputs = (info.output || []).map((t, i) => ({
      type: Array.isArray(t) ? "COMBO" : t,
      name: (info.output_name || [])[i] || (Array.isArray(t) ? "COMBO" : t),
      isList: !!(info.output_is_list || [])[i],
    }));
  }
  // Positions of widgets_values, as ComfyUI's canvas lays them out (the rules of
  // engine/graph/ui_widgets.py widget_layout): the widgets in order, required first; after a seed-like
  // INT its control_after_generate value; after all required inputs one "upload" placeholder when one
  // of them is a media-upload combo. `uploads: false` leaves the placeholder out; `forced: true` adds
  // the values older canvases saved for forceInput inputs of widget types.
  widgetLayout({ uploads = true, forced = false } = {}) {
    const slots = [];
    for (const optional of [false, true]) {
      const group = this.inputs.filter((spec) => spec.optional === optional);
      for (const spec of group) {
        if (spec.isWidget) slots.push({ kind: "input", name: spec.name, spec });
        else if (forced && spec.options.forceInput && WIDGET_TYPES.has(spec.type)) slots.push({ kind: "forced", name: spec.name, spec });
        else continue;
        if (hasControl(spec)) slots.push({ kind: "control", name: "control_after_generate", spec });
      }
      const upload = optional ? null : group.find(hasUpload);
      if (uploads && upload) slots.push({ kind: "upload", name: "upload", spec: upload });
    }
    return slots;
  }
  // Which full-layout slot each of a node's saved `widgets_values` belongs to: [[slotIndex, value]]
  // (ui_widgets._align). A list whose length fits a layout exactly is read with it (newest first);
  // otherwise the full layout is walked, skipping a control position whose value is not a control mode
  // (the file predates the control) and stopping where the values end.
  alignWidgetValues(values) {
    const full = this.widgetLayout();
    const indexOf = (slot) => full.findIndex((f) => f.kind === slot.kind && f.spec === slot.spec);
    const candidates = [full, this.widgetLayout({ uploads: false })];
    if (this.inputs.some((s) => s.options.forceInput && WIDGET_TYPES.has(s.type))) {
      candidates.push(this.widgetLayout({ forced: true }), this.widgetLayout({ uploads: false, forced: true }));
    }
    const exact = candidates.find((layout) => layout.length === values.length);
    if (exact) return exact.map((slot, k) => [indexOf(slot), values[k]]).filter(([i]) => i >= 0);
    const out = [];
    let p = 0;
    for (let i = 0; i < full.length && p < values.length; i++) {
      const slot = full[i], value = values[p];
      if (slot.kind === "control") {
        if (isControlValue(value, full[i + 1])) { out.push([i, value]); p++; }
        continue;
      }
      out.push([i, value]); p++;
    }
    return out;
  }
}

// A UI node's saved values: {list} (an array, or an array saved as an object with "length") or
// {named} (an object keyed by widget name, or `widgets_values_named`), as ui_widgets._raw_values reads.
export function savedWidgetValues(raw) {
  const v = raw.widgets_values;
  if (Array.isArray(v)) return { list: v };
  if (v && typeof v === "object") {
    const n = v.length;
    if (Number.isInteger(n) && n >= 0 && n <= 10000) return { list: Array.from({ length: n }, (_, i) => v[String(i)] ?? null) };
    return { named: v };
  }
  const named = raw.widgets_values_named;
  if (named && typeof named === "object" && !Array.isArray(named)) return { named };
  return { list: [] };
}

export const MEDIA_UPLOAD_FLAGS = ["image_upload", "video_upload", "animated_image_upload", "audio_upload"];
export function hasUpload(spec) { return spec.type === "COMBO" && MEDIA_UPLOAD_FLAGS.some((f) => spec.options[f]); }

export function hasControl(spec) {
  return spec.type === "INT" && (!!spec.options.control_after_generate || SEED_NAMES.has(spec.name));
}

// A control position holds a mode name, or a boolean: the March-April 2023 toggle, unless the file
// predates the control and the boolean is the next widget's (a BOOLEAN's) value.
function isControlValue(value, next) {
  if (typeof value === "string") return CONTROL_VALUES.includes(value);
  if (typeof value !== "boolean") return false;
  return !(next && next.kind !== "upload" && next.spec.type === "BOOLEAN");
}
// The 2023 toggle as a mode: true randomized the seed, false kept it.
export function controlMode(value) {
  if (value === true) return "randomize";
  if (value === false) return "fixed";
  return CONTROL_VALUES.includes(value) ? value : "fixed";
}

export function typesCompatible(a, b) {
  if (!a || !b || a === "*" || b === "*") return true;
  if (a === b) return true;
  const as = String(a).split(","), bs = String(b).split(",");
  return as.some((x) => bs.includes(x));
}

export class SchemaSet {
  constructor(objectInfo = {}) {
    this.byName = new Map();
    for (const [name, info] of Object.entries(objectInfo)) this.byName.set(name, new NodeSchema(name, info));
  }
  get(name) { return this.byName.get(name); }
  all() { return [...this.byName.values()]; }
}

const TYPE_COLORS = {
  MODEL: "#b39ddb", CLIP: "#ffd54f", VAE: "#ef5350", CONDITIONING: "#ffa931", LATENT: "#ff6e9c",
  IMAGE: "#64b5f6", MASK: "#81c784", CONTROL_NET: "#00d78d", UPSCALE_MODEL: "#a5a5a5",
  INT: "#29b6f6", FLOAT: "#26a69a", STRING: "#9ccc65", BOOLEAN: "#ab47bc", COMBO: "#8d6e63",
};
export function typeColor(type) {
  if (TYPE_COLORS[type]) return TYPE_COLORS[type];
  let h = 0;
  for (const c of String(type)) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h},55%,60%)`;
}
