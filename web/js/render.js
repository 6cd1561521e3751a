// Canvas 2D drawing of the graph: grid, groups, links, nodes, widgets, overlays.
import { SLOT_H, TITLE_H, MODE_BYPASSED, MODE_MUTED } from "./graph.js";
import { collapsedWidth, imageArea, inputPos, isReroute, nodeBounds, outputPos, widgetRects } from "./geometry.js";
import { typeColor } from "./schema.js";

const FONT = "12px sans-serif";

export class Renderer {
  constructor(app, canvas) {
    this.app = app;
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.dirty = true;
    this.imageCache = new Map();
    this.frameTimes = [];
    const loop = () => {
      if (this.dirty) { this.dirty = false; const t0 = performance.now(); this.draw(); this.frameTimes.push(performance.now() - t0); if (this.frameTimes.length > 2000) this.frameTimes.shift(); }
      requestAnimationFrame(loop);
    };
    requestAnimationFrame(loop);
  }
  setDirty() { this.dirty = true; }
  image(url) {
    let img = this.imageCache.get(url);
    if (!img) { img = new Image(); img.onload = () => this.setDirty(); img.src = url; this.imageCache.set(url, img); }
    return img;
  }
  resize() {
    const dpr = window.devicePixelRatio || 1;
    const r = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.round(r.width * dpr); this.canvas.height = Math.round(r.height * dpr);
    this.dpr = dpr; this.setDirty();
  }
  draw() {
    const { ctx, app } = this;
    const { scale, offset } = app.view;
    const dpr = this.dpr || 1;
    const W = this.canvas.width / dpr, H = this.canvas.height / dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#202020"; ctx.fillRect(0, 0, W, H);
    ctx.setTransform(dpr * scale, 0, 0, dpr * scale, dpr * offset[0] * scale, dpr * offset[1] * scale);
    const vis = [-offset[0], -offset[1], W / scale, H / scale];
    this.drawGrid(vis);
    for (const g of app.graph.groups) this.drawGroup(g);
    this.drawLinks(vis);
    const order = app.drawOrder();
    const lowDetail = scale < 0.45;
    for (const id of order) {
      const node = app.graph.nodes.get(id);
      const b = nodeBounds(node);
      if (b[0] > vis[0] + vis[2] || b[1] > vis[1] + vis[3] || b[0] + b[2] < vis[0] || b[1] + b[3] < vis[1]) continue;
      this.drawNode(node, lowDetail);
    }
    this.drawOverlays();
  }
  drawGrid(vis) {
    const { ctx } = this; const step = 50;
    if (this.app.view.scale < 0.3) return;
    ctx.strokeStyle = "#2a2a2a"; ctx.lineWidth = 1; ctx.beginPath();
    for (let x = Math.floor(vis[0] / step) * step; x < vis[0] + vis[2]; x += step) { ctx.moveTo(x, vis[1]); ctx.lineTo(x, vis[1] + vis[3]); }
    for (let y = Math.floor(vis[1] / step) * step; y < vis[1] + vis[3]; y += step) { ctx.moveTo(vis[0], y); ctx.lineTo(vis[0] + vis[2], y); }
    ctx.stroke();
  }
  drawGroup(g) {
    const { ctx } = this; const [x, y, w, h] = g.bounding;
    ctx.fillStyle = (g.color || "#3f789e") + "44"; ctx.strokeStyle = g.color || "#3f789e"; ctx.lineWidth = 1;
    ctx.fillRect(x, y, w, h); ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = g.color || "#3f789e"; ctx.fillRect(x, y, w, 34);
    ctx.fillStyle = "#fff"; ctx.font = "20px sans-serif"; ctx.textBaseline = "middle"; ctx.fillText(g.title, x + 8, y + 17);
    ctx.fillStyle = "#ffffff55"; ctx.beginPath(); ctx.moveTo(x + w, y + h - 12); ctx.lineTo(x + w, y + h); ctx.lineTo(x + w - 12, y + h); ctx.fill();
  }
  drawLinks(vis) {
    const { ctx, app } = this;
    ctx.lineWidth = 3;
    for (const l of app.graph.links.values()) {
      const o = app.graph.nodes.get(l.origin_id), t = app.graph.nodes.get(l.target_id);
      if (!o || !t) continue;
      const a = outputPos(o, l.origin_slot), b = inputPos(t, l.target_slot);
      if (Math.max(a[0], b[0]) < vis[0] || Math.min(a[0], b[0]) > vis[0] + vis[2] || Math.max(a[1], b[1]) < vis[1] || Math.min(a[1], b[1]) > vis[1] + vis[3]) continue;
      const muted = o.mode === MODE_MUTED || t.mode === MODE_MUTED;
      this.bezier(a, b, typeColor(o.outputs[l.origin_slot]?.type || l.type), muted ? 0.3 : 0.9);
    }
  }
  bezier(a, b, color, alpha = 0.9) {
    const { ctx } = this; const d = Math.max(40, Math.abs(b[0] - a[0]) * 0.5);
    ctx.globalAlpha = alpha; ctx.strokeStyle = color; ctx.beginPath(); ctx.moveTo(a[0], a[1]);
    ctx.bezierCurveTo(a[0] + d, a[1], b[0] - d, b[1], b[0], b[1]); ctx.stroke(); ctx.globalAlpha = 1;
  }
  drawNode(node, lowDetail) {
    const { ctx, app } = this;
    const [x, y, w, h] = nodeBounds(node);
    const selected = app.selected.has(node.id);
    const err = app.nodeErrors.get(String(node.id));
    ctx.globalAlpha = node.mode === MODE_MUTED ? 0.45 : 1;
    if (isReroute(node)) {
      ctx.fillStyle = "#353535"; roundRect(ctx, x, y, w, h, 12); ctx.fill();
      if (selected) { ctx.strokeStyle = "#fff"; ctx.lineWidth = 2; ctx.stroke(); }
      this.socket(inputPos(node, 0), node.inputs[0].type, node.inputs[0].link != null);
      this.socket(outputPos(node, 0), node.outputs[0].type, node.outputs[0].links.length > 0);
      ctx.globalAlpha = 1; return;
    }
    const body = node.mode === MODE_BYPASSED ? "#6a2f6a" : (node.bgcolor || (node.missing ? "#5a2020" : "#353535"));
    ctx.fillStyle = body; roundRect(ctx, x, y, w, h, 8); ctx.fill();
    ctx.fillStyle = node.mode === MODE_BYPASSED ? "#8a3f8a" : (node.color || "#222"); roundRect(ctx, x, y, w, TITLE_H, node.collapsed ? 8 : [8, 8, 0, 0]); ctx.fill();
    const executing = app.executing != null && String(app.executing) === String(node.id);
    if (executing || selected || err) {
      ctx.lineWidth = executing || err ? 3 : 2;
      ctx.strokeStyle = err ? "#ff3b3b" : executing ? "#4caf50" : "#ffffff";
      roundRect(ctx, x - 1, y - 1, w + 2, h + 2, 9); ctx.stroke();
    }
    ctx.fillStyle = "#ddd"; ctx.font = "bold 13px sans-serif"; ctx.textBaseline = "middle";
    ctx.fillText(node.collapsed ? "▸" : "▾", x + 7, y + TITLE_H / 2);
    ctx.fillText(clip(ctx, node.title + (node.mode === MODE_BYPASSED ? " (bypassed)" : node.mode === MODE_MUTED ? " (muted)" : ""), (node.collapsed ? collapsedWidth(node) : w) - 30), x + 22, y + TITLE_H / 2);
    if (node.collapsed) {
      if (node.inputs.length) this.socket(inputPos(node, 0), "*", true);
      if (node.outputs.length) this.socket(outputPos(node, 0), "*", true);
      ctx.globalAlpha = 1; return;
    }
    if (app.progress && String(app.progress.node) === String(node.id) && app.progress.max > 0) {
      ctx.fillStyle = "#4caf50"; ctx.fillRect(x, y + TITLE_H - 3, w * (app.progress.value / app.progress.max), 3);
    }
    if (!lowDetail) {
      ctx.font = FONT;
      node.inputs.forEach((inp, i) => {
        const p = inputPos(node, i);
        this.socket(p, inp.type, inp.link != null, err?.inputs?.has(inp.widget?.name ?? inp.name));
        ctx.fillStyle = err?.inputs?.has(inp.name) ? "#ff8080" : "#bbb"; ctx.textAlign = "left"; ctx.fillText(inp.name, p[0] + 10, p[1]);
      });
      node.outputs.forEach((out, i) => {
        const p = outputPos(node, i);
        this.socket(p, out.type, out.links.length > 0);
        ctx.fillStyle = "#bbb"; ctx.textAlign = "right"; ctx.fillText(out.name, p[0] - 10, p[1]);
      });
      ctx.textAlign = "left";
      for (const { widget, rect } of widgetRects(node)) this.drawWidget(widget, rect, err?.inputs?.has(widget.name));
      this.drawImages(node);
      if (node.missing && node.missingReason) this.drawMissingReason(node);
      if (err && err.message) {
        ctx.fillStyle = "#ff6b6b"; ctx.font = FONT;
        wrap(ctx, err.message, w - 8).slice(0, 4).forEach((line, k) => ctx.fillText(line, x + 4, y + h + 12 + k * 14));
      }
    }
    ctx.globalAlpha = 1;
  }
  // An unknown node type says so, with the import error of the pack that should provide it.
  drawMissingReason(node) {
    const { ctx } = this;
    const rows = Math.max(node.inputs.length, node.outputs.length);
    let y = node.pos[1] + rows * SLOT_H + 14;
    ctx.font = FONT; ctx.textAlign = "left"; ctx.textBaseline = "middle";
    node.missingReason.split("\n").forEach((para, k) => {
      ctx.fillStyle = k === 0 ? "#ffd0d0" : "#ff9a9a";
      for (const line of wrap(ctx, para, node.size[0] - 16)) {
        if (y > node.pos[1] + node.size[1] - 6) return;
        ctx.fillText(line, node.pos[0] + 8, y); y += 14;
      }
    });
  }
  socket(p, type, filled, error = false) {
    const { ctx } = this;
    ctx.beginPath(); ctx.arc(p[0], p[1], 5, 0, Math.PI * 2);
    ctx.fillStyle = typeColor(type);
    if (filled) ctx.fill(); else { ctx.lineWidth = 2; ctx.strokeStyle = typeColor(type); ctx.stroke(); }
    if (error) { ctx.strokeStyle = "#ff3b3b"; ctx.lineWidth = 2; ctx.beginPath(); ctx.arc(p[0], p[1], 8, 0, Math.PI * 2); ctx.stroke(); }
  }
  drawWidget(w, [x, y, width, h], error) {
    const { ctx } = this;
    ctx.fillStyle = "#222"; ctx.strokeStyle = error ? "#ff3b3b" : "#555"; ctx.lineWidth = 1;
    roundRect(ctx, x, y, width, h, w.kind === "textarea" ? 4 : h / 2); ctx.fill(); ctx.stroke();
    ctx.font = FONT; ctx.textBaseline = "middle"; const cy = y + h / 2;
    if (w.kind === "textarea") {
      ctx.fillStyle = "#ccc";
      const lines = String(w.value ?? "").split("\n").flatMap((l) => wrap(ctx, l, width - 10));
      lines.slice(0, Math.floor((h - 6) / 14)).forEach((line, k) => ctx.fillText(line, x + 5, y + 10 + k * 14));
      if (!w.value) { ctx.fillStyle = "#777"; ctx.fillText(w.name, x + 5, y + 10); }
      return;
    }
    if (w.kind === "button") { ctx.fillStyle = "#ccc"; ctx.textAlign = "center"; ctx.fillText("choose file to upload", x + width / 2, cy); ctx.textAlign = "left"; return; }
    const arrows = w.kind === "number" || w.kind === "combo";
    if (arrows) { ctx.fillStyle = "#999"; ctx.fillText("◀", x + 6, cy); ctx.textAlign = "right"; ctx.fillText("▶", x + width - 6, cy); ctx.textAlign = "left"; }
    const pad = arrows ? 20 : 10;
    let text;
    if (w.kind === "toggle") text = w.value ? "true" : "false";
    else if (w.kind === "number") text = formatNumber(w);
    else text = String(w.value ?? "");
    // The value wins the space; the label gets what is left.
    const avail = width - pad * 2 - 10;
    const valueText = clip(ctx, text, Math.max(avail * 0.45, avail - ctx.measureText(w.name).width - (w.kind === "toggle" ? 20 : 0)));
    const valueW = ctx.measureText(valueText).width + (w.kind === "toggle" ? 20 : 0);
    ctx.fillStyle = "#999"; ctx.fillText(clip(ctx, w.name, avail - valueW), x + pad, cy);
    ctx.textAlign = "right"; ctx.fillStyle = "#eee";
    ctx.fillText(valueText, x + width - pad, cy);
    if (w.kind === "toggle") { ctx.beginPath(); ctx.arc(x + width - pad - valueW + 8, cy, 5, 0, Math.PI * 2); ctx.fillStyle = w.value ? "#4caf50" : "#666"; ctx.fill(); }
    ctx.textAlign = "left";
  }
  drawImages(node) {
    const urls = node.preview ? [node.preview] : (node.imageUrls || []);
    if (!urls.length) return;
    const [x, y, w, h] = imageArea(node);
    if (w < 10 || h < 10) return;
    const img = this.image(urls[urls.length - 1]);
    if (!img.complete || !img.naturalWidth) return;
    const s = Math.min(w / img.naturalWidth, h / img.naturalHeight);
    const dw = img.naturalWidth * s, dh = img.naturalHeight * s;
    this.ctx.drawImage(img, x + (w - dw) / 2, y + (h - dh) / 2, dw, dh);
  }
  drawOverlays() {
    const { ctx, app } = this; const drag = app.linkDrag;
    if (drag) {
      const from = drag.fromOutput ? outputPos(drag.node, drag.slot) : inputPos(drag.node, drag.slot);
      const to = [drag.x, drag.y];
      const target = drag.target;
      let color = typeColor(drag.type);
      if (target) color = target.ok ? "#7CFC00" : "#ff3b3b";
      drag.fromOutput ? this.bezier(from, to, color) : this.bezier(to, from, color);
      if (target) {
        ctx.lineWidth = 3; ctx.strokeStyle = color; ctx.beginPath(); ctx.arc(target.pos[0], target.pos[1], 9, 0, Math.PI * 2); ctx.stroke();
        if (!target.ok) {
          ctx.fillStyle = "#ff3b3b"; ctx.font = "bold 12px sans-serif";
          ctx.fillText(`✕ ${drag.type} → ${target.type}`, target.pos[0] + 12, target.pos[1] - 12);
        }
      }
    }
    if (app.boxSelect) {
      const r = app.boxSelect.rect; ctx.strokeStyle = "#fff"; ctx.setLineDash([5, 5]); ctx.lineWidth = 1;
      ctx.strokeRect(r[0], r[1], r[2], r[3]); ctx.setLineDash([]);
    }
  }
}


function formatNumber(w) {
  const v = Number(w.value);
  if (w.spec?.type === "FLOAT") {
    const step = w.spec.options.step ?? 0.01;
    const decimals = w.spec.options.round ? Math.max(0, -Math.floor(Math.log10(w.spec.options.round))) : Math.max(0, Math.min(6, -Math.floor(Math.log10(step))));
    return v.toFixed(Math.max(decimals, 1));
  }
  return String(w.value);
}
function clip(ctx, text, maxW) {
  if (ctx.measureText(text).width <= maxW) return text;
  let lo = 0, hi = text.length;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (ctx.measureText(text.slice(0, mid) + "…").width <= maxW) lo = mid; else hi = mid - 1; }
  return text.slice(0, lo) + "…";
}
function wrap(ctx, text, maxW) {
  const words = String(text).split(" "); const lines = []; let cur = "";
  for (const word of words) {
    const t = cur ? cur + " " + word : word;
    if (ctx.measureText(t).width > maxW && cur) { lines.push(cur); cur = word; } else cur = t;
  }
  lines.push(cur); return lines;
}
function roundRect(ctx, x, y, w, h, r) { ctx.beginPath(); ctx.roundRect(x, y, w, h, r); }
