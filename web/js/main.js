// Entry point: builds the app, loads node schemas, restores the last graph, wires shortcuts,
// the WebSocket and plugin extensions.
import { ApiClient } from "./api.js";
import { App } from "./app.js";
import { MODE_BYPASSED, MODE_MUTED } from "./graph.js";
import { attachDrop, defaultGraph, persist, pickFile, restoreSaved, saveWorkflow } from "./files.js";
import { attachInteraction } from "./interaction.js";
import * as geometry from "./geometry.js";
import { closeMenus, closeSearch } from "./menus.js";
import { Panels } from "./panels.js";
import { Runner } from "./runner.js";

async function main() {
  const canvas = document.getElementById("graph-canvas");
  const api = new ApiClient();
  const app = new App(canvas, api);
  const runner = new Runner(app, api);
  const panels = new Panels(app, api, runner);
  window.diffgraph = { app, api, runner, panels, geometry, registerExtension: (ext) => registerExtension(app, ext) };
  app.renderer.resize();
  window.addEventListener("resize", () => app.renderer.resize());
  attachInteraction(app, canvas);
  attachDrop(app, document.body);
  const packs = app.loadPluginPacks(); // for the import errors of packs whose nodes a workflow misses
  try { await app.loadSchemas(); } catch (e) { panels.toast(`Could not load /object_info: ${e.message}`, true); }
  await packs;
  if (!restoreSaved(app)) app.loadDocument(defaultGraph(app));
  app.resetHistory();
  let saveTimer = null;
  app.addEventListener("graphchange", () => { clearTimeout(saveTimer); saveTimer = setTimeout(() => persist(app), 200); });
  window.addEventListener("beforeunload", () => persist(app));
  attachShortcuts(app, runner, panels, api);
  api.connect();
  panels.initExamples();
  await loadExtensions(app, api);
  document.body.dataset.ready = "1";
}

function attachShortcuts(app, runner, panels, api) {
  window.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t?.isContentEditable) return;
    const ctrl = e.ctrlKey || e.metaKey;
    const k = e.key.toLowerCase();
    let handled = true;
    if (ctrl && k === "enter" && e.altKey) api.interrupt().catch(() => {});
    else if (ctrl && k === "enter") runner.queue(panels.batchCount(), e.shiftKey);
    else if (ctrl && k === "z" && !e.shiftKey) app.undo();
    else if (ctrl && (k === "y" || (k === "z" && e.shiftKey))) app.redo();
    else if (ctrl && k === "c") app.copySelection();
    else if (ctrl && k === "v") app.paste();
    else if (ctrl && k === "d") app.duplicateSelected();
    else if (ctrl && k === "a") { for (const id of app.graph.nodes.keys()) app.selected.add(id); app.setDirty(); }
    else if (ctrl && k === "b") app.setMode(app.selectedNodes(), MODE_BYPASSED);
    else if (ctrl && k === "m") app.setMode(app.selectedNodes(), MODE_MUTED);
    else if (ctrl && k === "g") app.groupSelected();
    else if (ctrl && k === "s") saveWorkflow(app);
    else if (ctrl && k === "o") pickFile(app);
    else if (e.altKey && k === "c") app.toggleCollapse(app.selectedNodes());
    else if (!ctrl && (k === "delete" || k === "backspace")) app.deleteSelected();
    else if (!ctrl && k === ".") app.fitView();
    else if (!ctrl && e.key === "?") panels.toggleHelp();
    else if (k === "escape") { closeMenus(); closeSearch(); document.getElementById("help")?.remove(); document.getElementById("lightbox")?.remove(); app.clearSelection(); }
    else handled = false;
    if (handled) e.preventDefault();
  });
}

// Extensions: {name, setup?(app), nodeMenuItems?(node) -> [{label, action}]}. A failing extension is
// reported and skipped, never fatal.
function registerExtension(app, ext) {
  try {
    if (ext.nodeMenuItems) app.menuItemHooks.push((node) => ext.nodeMenuItems(node));
    ext.setup?.(app);
  } catch (e) { console.warn(`extension ${ext?.name} failed in setup`, e); app.toast(`Extension ${ext?.name} failed: ${e.message}`, true); }
}

async function loadExtensions(app, api) {
  let list = [];
  try { list = await api.fetchJson("/extensions"); } catch { return; }
  for (const url of Array.isArray(list) ? list : []) {
    try { await import(new URL(url, location.origin).href); } catch (e) { console.warn(`extension ${url} failed to load`, e); app.toast(`Extension ${url} failed to load`, true); }
  }
}

main();
