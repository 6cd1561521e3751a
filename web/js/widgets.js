// Widget behaviour: number drag/step/clamp, combos, toggles, text editors, image upload, and
// control_after_generate (fixed/increment/decrement/randomize) applied after a prompt is queued.
import { editValue, showMenu } from "./menus.js";
import { hasUpload } from "./schema.js";

export function clampNumber(w, v) {
  const o = w.spec?.options || {};
  v = Number(v);
  if (!Number.isFinite(v)) return w.value;
  if (o.min !== undefined) v = Math.max(o.min, v);
  if (o.max !== undefined) v = Math.min(o.max, v);
  if (w.spec?.type === "INT") {
    const step = o.step || 1;
    const base = o.min !== undefined && Number.isSafeInteger(o.min) ? o.min : 0;
    v = Math.round((v - base) / step) * step + base;
    if (o.max !== undefined && v > o.max) v -= step;
    return Math.round(v);
  }
  const r = o.round ?? o.step ?? 0.01;
  if (r) { v = Math.round(v / r) * r; v = Number(v.toFixed(Math.max(0, Math.ceil(-Math.log10(r))) + 1)); }
  return v;
}

function stepOf(w) { return w.spec?.options?.step ?? (w.spec?.type === "INT" ? 1 : 0.01); }

function choicesOf(w) { return w.spec?.choices || []; }

// Called on pointerdown over a widget; returns {move(dxScreen), up(moved, localX)} handlers.
export function beginWidgetInteraction(app, node, w, rect, screenRect) {
  if (w.kind === "number") {
    const start = Number(w.value);
    let dragged = false;
    return {
      move(dx) {
        if (Math.abs(dx) > 3) dragged = true;
        if (!dragged) return;
        w.value = clampNumber(w, start + Math.trunc(dx / 6) * stepOf(w));
        app.changed(false);
      },
      up(localX) {
        if (dragged) { app.changed(); return; }
        if (localX < 18) w.value = clampNumber(w, Number(w.value) - stepOf(w));
        else if (localX > rect[2] - 18) w.value = clampNumber(w, Number(w.value) + stepOf(w));
        else {
          editValue(screenRect, String(w.value), { onCommit: (s) => { w.value = clampNumber(w, s); app.changed(); } });
          return;
        }
        app.changed();
      },
    };
  }
  return {
    move() {},
    up(localX) {
      if (w.kind === "toggle") { w.value = !w.value; app.changed(); }
      else if (w.kind === "combo") {
        const list = choicesOf(w);
        const i = list.indexOf(w.value);
        if (localX < 18 && list.length) { w.value = list[(Math.max(i, 0) - 1 + list.length) % list.length]; app.changed(); }
        else if (localX > rect[2] - 18 && list.length) { w.value = list[(i + 1) % list.length]; app.changed(); }
        else {
          showMenu(list.map((c) => ({ label: String(c), action: () => { w.value = c; app.changed(); } })),
            screenRect[0], screenRect[1] + screenRect[3], { filter: list.length > 10, className: "dg-combo-menu" });
        }
      } else if (w.kind === "text" || w.kind === "textarea") {
        editValue(screenRect, String(w.value ?? ""), { multiline: w.kind === "textarea", onCommit: (s) => { w.value = s; app.changed(); } });
      } else if (w.kind === "button" && w.upload) {
        pickAndUpload(app, node, w.upload);
      }
    },
  };
}

function pickAndUpload(app, node, widgetName) {
  const input = document.createElement("input");
  input.type = "file"; input.accept = "image/*";
  input.onchange = async () => {
    const file = input.files?.[0];
    if (file) await uploadToWidget(app, node, widgetName, file);
  };
  input.click();
}

export async function uploadToWidget(app, node, widgetName, file) {
  try {
    const res = await app.api.uploadImage(file);
    const name = res.subfolder ? `${res.subfolder}/${res.name}` : res.name;
    const w = node.widget(widgetName);
    if (!w.spec.choices.includes(name)) w.spec.choices.push(name);
    w.value = name;
    refreshInputImage(app, node);
    app.changed();
  } catch (e) { app.toast(`Upload failed: ${e.message}`, true); }
}

// LoadImage-like nodes show the chosen input file.
export function refreshInputImage(app, node) {
  if (!node.hasImageWidget) return;
  const w = node.widgets.find((x) => !x.upload && hasUpload(x.spec || { options: {} }));
  if (!w || !w.value) return;
  // ComfyUI's annotated names ("x.png [output]", written by its mask editor) name the folder.
  const m = /^(.*) \[(input|output|temp)\]$/.exec(String(w.value));
  const name = m ? m[1] : String(w.value), type = m ? m[2] : "input";
  const cut = name.lastIndexOf("/");
  node.imageUrls = [app.api.viewUrl({ filename: name.slice(cut + 1), subfolder: cut >= 0 ? name.slice(0, cut) : "", type })];
}

// After queueing, seed-like widgets move on by their control value (ComfyUI's behaviour).
export function applyControlAfterGenerate(graph) {
  for (const node of graph.nodes.values()) {
    node.widgets.forEach((w, i) => {
      if (!w.control) return;
      const target = node.widgets[i - 1];
      if (!target || target.kind !== "number") return;
      const o = target.spec.options;
      const min = o.min ?? 0, max = Math.min(o.max ?? Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
      const step = o.step || 1;
      if (w.value === "increment") target.value = Math.min(max, Number(target.value) + step);
      else if (w.value === "decrement") target.value = Math.max(min, Number(target.value) - step);
      else if (w.value === "randomize") {
        const hi = Math.min(max, 2 ** 50), lo = Math.max(min, 0);
        target.value = lo + Math.floor(Math.random() * (hi - lo + 1));
      }
    });
  }
}
