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
  // Positions of widgets_values: each widget, then an extra control_after_generate value after
  // seed-like INTs and a placeholder after image-upload combos (same rules as ui_format.widget_layout).
  widgetLayout() {
    const slots = [];
    for (const spec of this.inputs) {
      if (!spec.isWidget) continue;
      slots.push({ kind: "input", name: spec.name, spec });
      if (hasControl(spec)) slots.push({ kind: "control", name: "control_after_generate", spec });
      if (spec.options.image_upload || spec.options.upload) slots.push({ kind: "upload", name: "upload", spec });
    }
    return slots;
  }
}

export function hasControl(spec) {
  return spec.type === "INT" && (!!spec.options.control_after_generate || SEED_NAMES.has(spec.name));
}

// Socket types are compatible when equal, either is "*", or comma-separated unions overlap.
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
