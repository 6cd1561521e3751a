// UI format -> API format, with the same rules as engine/graph/ui_format.py: UI-only nodes (Reroute,
// PrimitiveNode, Note) never reach the API; muted nodes (mode 2) are dropped; bypassed nodes (mode 4)
// are dropped and each output is replaced by the connected input of a compatible type.
import { UI_ONLY_TYPES, savedWidgetValues, typesCompatible } from "./schema.js";

export function uiToApi(doc, schemas) {
  const links = new Map();
  for (const raw of doc.links || []) {
    if (!raw || typeof raw !== "object") continue; // nulls where ComfyUI's canvas removed links
    const l = Array.isArray(raw) ? { id: raw[0], o: raw[1], os: raw[2], type: raw[5] ?? "*" }
      : { id: raw.id, o: raw.origin_id, os: raw.origin_slot, type: raw.type ?? "*" };
    links.set(Number(l.id), l);
  }
  const nodes = new Map(doc.nodes.map((n) => [Number(n.id), n]));
  const resolve = (linkId, depth = 0) => {
    if (depth > nodes.size + 1) throw new Error(`link ${linkId} loops through reroutes/bypassed nodes`);
    const l = links.get(Number(linkId));
    if (!l) throw new Error(`an input refers to link ${linkId}, which is not in 'links'`);
    const origin = nodes.get(Number(l.o));
    if (!origin) throw new Error(`link ${linkId} comes from node ${l.o}, which is not in 'nodes'`);
    const follow = (idx) => {
      const slot = (origin.inputs || [])[idx];
      return slot && slot.link != null ? resolve(slot.link, depth + 1) : null;
    };
    if (origin.type === "Reroute") return follow(0);
    if (origin.type === "PrimitiveNode") {
      const v = origin.widgets_values || [];
      return v.length ? { constant: v[0] } : null;
    }
    if (UI_ONLY_TYPES.has(origin.type) || origin.mode === 2) return null;
    if (origin.mode === 4) {
      const outs = origin.outputs || [];
      const wanted = l.os < outs.length ? (outs[l.os].type ?? l.type) : l.type;
      const ins = origin.inputs || [];
      const order = (l.os < ins.length ? [l.os] : []).concat([...ins.keys()].filter((i) => i !== l.os));
      for (const i of order) {
        if (ins[i].link == null) continue;
        if (typesCompatible(String(ins[i].type ?? "*"), String(wanted))) return follow(i);
      }
      return null;
    }
    return { link: [String(origin.id), l.os] };
  };
  const out = {};
  for (const raw of doc.nodes) {
    if (UI_ONLY_TYPES.has(raw.type) || raw.mode === 2 || raw.mode === 4) continue;
    const schema = schemas.get(raw.type);
    const inputs = {};
    if (schema) Object.assign(inputs, widgetInputs(raw, schema));
    for (const slot of raw.inputs || []) {
      const name = slot.widget?.name ?? slot.name;
      if (slot.link == null || name == null) continue;
      const r = resolve(slot.link);
      if (r && "constant" in r) inputs[name] = r.constant;
      else if (r) inputs[name] = r.link;
      else if (!schema || !schema.inputs.some((s) => s.name === name && s.isWidget)) delete inputs[name];
    }
    const entry = { inputs, class_type: raw.type };
    if (typeof raw.title === "string") entry._meta = { title: raw.title };
    out[String(raw.id)] = entry;
  }
  return out;
}

// The widget inputs' values of one UI node (ui_widgets.read_widget_values): legacy forms normalised,
// missing ones defaulted.
function widgetInputs(raw, schema) {
  const { list, named } = savedWidgetValues(raw);
  const layout = schema.widgetLayout();
  const result = {};
  if (named) {
    for (const s of layout) if (s.kind === "input" && s.name in named) result[s.name] = named[s.name];
  } else {
    for (const [i, value] of schema.alignWidgetValues(list)) if (layout[i].kind === "input") result[layout[i].name] = value;
  }
  renameSamplerValues(raw.type, result);
  for (const slot of layout) {
    if (slot.kind !== "input") continue;
    const { name, spec } = slot;
    if (spec.type === "COMBO" && name in result && result[name] == null && spec.choices?.length) result[name] = spec.choices[0];
    if (!(name in result) && spec.options.default !== undefined) result[name] = spec.options.default;
  }
  return result;
}

// Sampler names ComfyUI's canvas rewrites on load: a "sample_" prefix (January 2023); euler_pp and
// euler_ancestral_pp (June 2024) become the plain sampler at twice the cfg.
const DOUBLED_CFG_SAMPLERS = { euler_pp: "euler", euler_ancestral_pp: "euler_ancestral" };
function renameSamplerValues(type, values) {
  if ((type !== "KSampler" && type !== "KSamplerAdvanced") || typeof values.sampler_name !== "string") return;
  let name = values.sampler_name;
  if (name.startsWith("sample_")) values.sampler_name = name = name.slice("sample_".length);
  if (Object.hasOwn(DOUBLED_CFG_SAMPLERS, name)) {
    values.sampler_name = DOUBLED_CFG_SAMPLERS[name];
    if (typeof values.cfg === "number") values.cfg *= 2;
  }
}
