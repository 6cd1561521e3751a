// UI format -> API format, with the same rules as engine/graph/ui_format.py: UI-only nodes (Reroute,
// PrimitiveNode, Note) never reach the API; muted nodes (mode 2) are dropped; bypassed nodes (mode 4)
// are dropped and each output is replaced by the connected input of a compatible type.
import { CONTROL_VALUES, UI_ONLY_TYPES, typesCompatible } from "./schema.js";

export function uiToApi(doc, schemas) {
  const links = new Map();
  for (const raw of doc.links || []) {
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

function widgetInputs(raw, schema) {
  const layout = schema.widgetLayout();
  const values = raw.widgets_values;
  const result = {};
  if (values && !Array.isArray(values) && typeof values === "object") {
    for (const s of layout) if (s.kind === "input" && s.name in values) result[s.name] = values[s.name];
    return result;
  }
  const list = values || [];
  let p = 0;
  for (const slot of layout) {
    if (p >= list.length) break;
    if (slot.kind !== "input") {
      if (slot.kind !== "control" || CONTROL_VALUES.includes(list[p])) p++;
      continue;
    }
    result[slot.name] = list[p++];
  }
  for (const slot of layout) {
    if (slot.kind === "input" && !(slot.name in result) && slot.spec.options.default !== undefined) {
      result[slot.name] = slot.spec.options.default;
    }
  }
  return result;
}
