// Workflow files: save/open UI-format JSON, export API format, PNG metadata, drag and drop,
// API-format import, local-storage persistence and the default txt2img graph.
import { uiToApi } from "./apiformat.js";
import { Graph } from "./graph.js";
import { askText } from "./menus.js";

const STORAGE_KEY = "diffgraph.workflow";

export function download(filename, text, type = "application/json") {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = filename;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// Asks for the file name first (the name of the opened file or example is offered), as ComfyUI does.
export async function saveWorkflow(app, name = null) {
  name ??= await askText("Save workflow as", app.workflowName || "workflow", "Save");
  if (!name) return false;
  app.workflowName = name.replace(/\.json$/i, "");
  download(`${app.workflowName}.json`, JSON.stringify(app.graph.serialize(app.view), null, 2));
  return true;
}
export function exportApi(app, name = "workflow_api") {
  download(`${name}.json`, JSON.stringify(uiToApi(app.graph.serialize(), app.schemas), null, 2));
}

// Reads PNG text chunks (tEXt latin-1, iTXt uncompressed UTF-8) into {keyword: text}. PNG spec §11.3.4.
export function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || sig.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(buffer);
  const out = {};
  let p = 8;
  const latin1 = new TextDecoder("latin1"), utf8 = new TextDecoder("utf-8");
  while (p + 8 <= bytes.length) {
    const len = view.getUint32(p); const type = latin1.decode(bytes.subarray(p + 4, p + 8));
    const data = bytes.subarray(p + 8, p + 8 + len);
    if (type === "tEXt") {
      const z = data.indexOf(0);
      if (z > 0) out[latin1.decode(data.subarray(0, z))] = latin1.decode(data.subarray(z + 1));
    } else if (type === "iTXt") {
      const z = data.indexOf(0);
      const compressed = data[z + 1];
      let q = data.indexOf(0, z + 3); q = data.indexOf(0, q + 1);
      if (!compressed && z > 0) out[latin1.decode(data.subarray(0, z))] = utf8.decode(data.subarray(q + 1));
    } else if (type === "IEND") break;
    p += 12 + len;
  }
  return out;
}

// An API-format prompt becomes a graph: one node per entry, links rebuilt, laid out in columns by depth.
export function apiToUi(prompt, schemas) {
  const graph = new Graph();
  const ids = Object.keys(prompt);
  const depth = new Map();
  const depthOf = (id, guard = 0) => {
    if (depth.has(id)) return depth.get(id);
    if (guard > ids.length) return 0;
    let d = 0;
    for (const v of Object.values(prompt[id].inputs || {})) if (Array.isArray(v) && v.length === 2 && prompt[String(v[0])]) d = Math.max(d, depthOf(String(v[0]), guard + 1) + 1);
    depth.set(id, d); return d;
  };
  const rows = new Map();
  for (const id of ids) {
    const entry = prompt[id];
    const node = graph.createNode(entry.class_type, schemas, Number(id) || undefined);
    const d = depthOf(id); const r = rows.get(d) || 0; rows.set(d, r + 1);
    node.pos = [d * 320, r * 260 + 40];
    if (entry._meta?.title) node.title = entry._meta.title;
    for (const [name, v] of Object.entries(entry.inputs || {})) {
      if (Array.isArray(v) && v.length === 2 && prompt[String(v[0])]) continue;
      const w = node.widget(name);
      if (w) w.value = v;
    }
  }
  for (const id of ids) {
    const target = [...graph.nodes.values()].find((n) => String(n.id) === id);
    for (const [name, v] of Object.entries(prompt[id].inputs || {})) {
      if (!(Array.isArray(v) && v.length === 2 && prompt[String(v[0])])) continue;
      const origin = [...graph.nodes.values()].find((n) => String(n.id) === String(v[0]));
      let slot = target.inputs.findIndex((i) => i.name === name);
      if (slot < 0 && graph.convertWidgetToInput(target, name)) slot = target.inputs.length - 1;
      if (origin && slot >= 0 && origin.outputs[v[1]]) graph.connect(origin, v[1], target, slot);
    }
  }
  return graph.serialize();
}

// Accepts a parsed JSON document of either format (or a PNG's text chunks) and loads it.
// `name` (a file name) becomes the name offered when saving.
export function loadAnyDocument(app, doc, name = null) {
  let ui = null;
  if (doc && Array.isArray(doc.nodes) && "links" in doc) ui = doc;
  else if (doc && typeof doc === "object" && Object.values(doc).every((v) => v && typeof v === "object" && "class_type" in v)) ui = apiToUi(doc, app.schemas);
  if (!ui) return false;
  app.loadDocument(ui);
  if (name) app.workflowName = String(name).replace(/\.(json|png)$/i, "");
  return true;
}

export async function openFile(app, file) {
  try {
    if (file.type === "image/png" || file.name.toLowerCase().endsWith(".png")) {
      const text = readPngText(await file.arrayBuffer()) || {};
      if (text.workflow) return loadAnyDocument(app, JSON.parse(text.workflow), file.name);
      if (text.prompt) return loadAnyDocument(app, JSON.parse(text.prompt), file.name);
      app.toast(`${file.name} has no embedded workflow`, true); return false;
    }
    const doc = JSON.parse(await file.text());
    if (!loadAnyDocument(app, doc, file.name)) { app.toast(`${file.name} is not a workflow (UI or API format)`, true); return false; }
    return true;
  } catch (e) { app.toast(`Could not open ${file.name}: ${e.message}`, true); return false; }
}

export function pickFile(app) {
  const input = document.createElement("input");
  input.type = "file"; input.accept = ".json,.png,application/json,image/png";
  input.onchange = () => { if (input.files?.[0]) openFile(app, input.files[0]); };
  input.click();
}

export function attachDrop(app, target) {
  target.addEventListener("dragover", (e) => { e.preventDefault(); });
  target.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer?.files?.[0];
    if (file) openFile(app, file);
  });
}

export function persist(app) { try { localStorage.setItem(STORAGE_KEY, JSON.stringify(app.graph.serialize(app.view))); } catch { /* quota */ } }
export function restoreSaved(app) {
  const text = localStorage.getItem(STORAGE_KEY);
  if (!text) return false;
  try { const doc = JSON.parse(text); app.loadDocument(doc, { fit: false }); return true; } catch { return false; }
}

// ComfyUI's default graph: checkpoint -> two prompts -> KSampler -> VAE decode -> save.
export function defaultGraph(app) {
  const s = app.schemas;
  const need = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"];
  const g = new Graph();
  if (need.some((n) => !s.get(n))) return g.serialize();
  const add = (type, x, y) => { const n = g.createNode(type, s); n.pos = [x, y]; return n; };
  const ckpt = add("CheckpointLoaderSimple", 30, 200);
  const pos = add("CLIPTextEncode", 420, 80), neg = add("CLIPTextEncode", 420, 330);
  const latent = add("EmptyLatentImage", 470, 600);
  const ks = add("KSampler", 860, 180), dec = add("VAEDecode", 1230, 180), save = add("SaveImage", 1460, 180);
  pos.widget("text").value = "beautiful scenery nature glass bottle landscape, purple galaxy bottle";
  neg.widget("text").value = "text, watermark";
  const link = (o, os, t, name) => g.connect(o, os, t, t.inputs.findIndex((i) => i.name === name));
  link(ckpt, 0, ks, "model"); link(ckpt, 1, pos, "clip"); link(ckpt, 1, neg, "clip");
  link(pos, 0, ks, "positive"); link(neg, 0, ks, "negative"); link(latent, 0, ks, "latent_image");
  link(ks, 0, dec, "samples"); link(ckpt, 2, dec, "vae"); link(dec, 0, save, "images");
  return g.serialize();
}
