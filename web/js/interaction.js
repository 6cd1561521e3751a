// Pointer, wheel and keyboard handling on the canvas: pan, zoom, select, move, connect, resize.
import { hitTest, inputPos, nodeBounds, nodesInsideRect, normRect, outputPos } from "./geometry.js";
import { closeMenus, closeSearch } from "./menus.js";
import { typesCompatible } from "./schema.js";
import { beginWidgetInteraction } from "./widgets.js";

export function attachInteraction(app, canvas) {
  let drag = null; // current gesture
  const toGraph = (e) => {
    const r = canvas.getBoundingClientRect();
    return app.toGraph(e.clientX - r.left, e.clientY - r.top);
  };
  canvas.addEventListener("pointerdown", (e) => {
    closeMenus(); closeSearch();
    document.activeElement?.blur?.();
    canvas.setPointerCapture(e.pointerId);
    const [gx, gy] = toGraph(e);
    app.mouse = [gx, gy];
    if (e.button === 1) { // middle mouse pans anywhere
      drag = { kind: "pan", sx: e.clientX, sy: e.clientY, off: [...app.view.offset] }; e.preventDefault(); return;
    }
    if (e.button !== 0) return;
    const hit = hitTest(app.graph, app.drawOrder(), gx, gy);
    if (hit.node) app.bringToFront(hit.node);
    switch (hit.kind) {
      case "output": {
        if (e.shiftKey && hit.node.outputs[hit.slot].links.length) { // shift-drag moves all links of an output
          drag = { kind: "link", fromOutput: true, node: hit.node, slot: hit.slot, type: hit.node.outputs[hit.slot].type, moveLinks: [...hit.node.outputs[hit.slot].links] };
        } else drag = { kind: "link", fromOutput: true, node: hit.node, slot: hit.slot, type: hit.node.outputs[hit.slot].type };
        break;
      }
      case "input": {
        const inp = hit.node.inputs[hit.slot];
        const link = app.graph.links.get(inp.link);
        if (link) { // pick the link up from its input: re-drag from the origin output
          const origin = app.graph.nodes.get(link.origin_id);
          app.graph.removeLink(link.id);
          drag = { kind: "link", fromOutput: true, node: origin, slot: link.origin_slot, type: origin.outputs[link.origin_slot].type, detached: true };
        } else drag = { kind: "link", fromOutput: false, node: hit.node, slot: hit.slot, type: inp.type };
        break;
      }
      case "widget": {
        const sr = app.toScreenRect(hit.rect);
        drag = { kind: "widget", handler: beginWidgetInteraction(app, hit.node, hit.widget, hit.rect, sr), sx: e.clientX, gx, rect: hit.rect };
        app.select(hit.node, e.shiftKey);
        break;
      }
      case "collapse": app.toggleCollapse([hit.node]); break;
      case "resize": drag = { kind: "resize", node: hit.node, start: [...hit.node.size], sx: gx, sy: gy }; break;
      case "title": case "body": {
        if (e.shiftKey || e.ctrlKey) app.toggleSelect(hit.node);
        else if (!app.selected.has(hit.node.id)) app.select(hit.node);
        drag = { kind: "move", sx: gx, sy: gy, nodes: app.selectedNodes().map((n) => [n, [...n.pos]]), moved: false };
        break;
      }
      case "groupTitle": {
        const g = hit.group; const [x, y, w, h] = g.bounding;
        const inside = [...app.graph.nodes.values()].filter((n) => { const b = nodeBounds(n); return b[0] >= x && b[1] >= y && b[0] + b[2] <= x + w && b[1] + b[3] <= y + h; });
        drag = { kind: "group", group: g, start: [...g.bounding], sx: gx, sy: gy, nodes: inside.map((n) => [n, [...n.pos]]) };
        app.selectedGroup = g;
        break;
      }
      case "groupResize": drag = { kind: "groupResize", group: hit.group, start: [...hit.group.bounding], sx: gx, sy: gy }; break;
      default:
        app.selectedGroup = null;
        if (e.ctrlKey || e.shiftKey) drag = { kind: "box", sx: gx, sy: gy, additive: e.shiftKey };
        else { drag = { kind: "pan", sx: e.clientX, sy: e.clientY, off: [...app.view.offset], clearOnClick: true }; }
    }
    if (drag?.kind === "link") { drag.x = gx; drag.y = gy; app.linkDrag = drag; }
    app.setDirty();
  });
  canvas.addEventListener("pointermove", (e) => {
    const [gx, gy] = toGraph(e);
    app.mouse = [gx, gy];
    if (!drag) return;
    switch (drag.kind) {
      case "pan": {
        const s = app.view.scale;
        if (Math.abs(e.clientX - drag.sx) + Math.abs(e.clientY - drag.sy) > 3) drag.clearOnClick = false;
        app.view.offset = [drag.off[0] + (e.clientX - drag.sx) / s, drag.off[1] + (e.clientY - drag.sy) / s];
        break;
      }
      case "move":
        drag.moved = true;
        for (const [n, p] of drag.nodes) n.pos = [p[0] + gx - drag.sx, p[1] + gy - drag.sy];
        break;
      case "resize": drag.node.size = [Math.max(80, drag.start[0] + gx - drag.sx), Math.max(30, drag.start[1] + gy - drag.sy)]; break;
      case "group": {
        const dx = gx - drag.sx, dy = gy - drag.sy;
        drag.group.bounding = [drag.start[0] + dx, drag.start[1] + dy, drag.start[2], drag.start[3]];
        for (const [n, p] of drag.nodes) n.pos = [p[0] + dx, p[1] + dy];
        break;
      }
      case "groupResize": drag.group.bounding = [drag.start[0], drag.start[1], Math.max(100, drag.start[2] + gx - drag.sx), Math.max(60, drag.start[3] + gy - drag.sy)]; break;
      case "box": app.boxSelect = { rect: normRect(drag.sx, drag.sy, gx, gy) }; break;
      case "widget": drag.handler.move((e.clientX - drag.sx)); break;
      case "link": {
        drag.x = gx; drag.y = gy;
        drag.target = linkTarget(app, drag, gx, gy);
        break;
      }
    }
    app.setDirty();
  });
  const finish = (e) => {
    if (!drag) return;
    const [gx, gy] = toGraph(e);
    const d = drag; drag = null;
    switch (d.kind) {
      case "pan": if (d.clearOnClick) app.clearSelection(); break;
      case "move": if (d.moved) app.changed(); break;
      case "resize": case "group": case "groupResize": app.changed(); break;
      case "box": {
        const r = app.boxSelect?.rect; app.boxSelect = null;
        if (r) { if (!d.additive) app.selected.clear(); for (const n of nodesInsideRect(app.graph, r)) app.selected.add(n.id); }
        break;
      }
      case "widget": d.handler.up(d.gx - d.rect[0] + 0, e); app.setDirty(); break;
      case "link": {
        app.linkDrag = null;
        const t = linkTarget(app, d, gx, gy);
        if (t && t.ok) {
          if (d.fromOutput) app.graph.connect(d.node, d.slot, t.node, t.slot);
          else app.graph.connect(t.node, t.slot, d.node, d.slot);
          app.changed();
        } else if (t && !t.ok) {
          app.toast(`Cannot connect ${d.type} to ${t.type}`, true);
          if (d.detached) app.changed();
        } else if (!t) {
          const hit = hitTest(app.graph, app.drawOrder(), gx, gy);
          if (hit.kind === "background") {
            const r = canvas.getBoundingClientRect();
            app.openSearch(e.clientX - r.left, e.clientY - r.top, { fromSlot: d });
          } else if (d.detached) app.changed();
        }
        break;
      }
    }
    app.setDirty();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    const factor = Math.exp(-e.deltaY * (e.ctrlKey ? 0.01 : 0.0015));
    app.zoomAt(e.clientX - r.left, e.clientY - r.top, factor);
  }, { passive: false });
  canvas.addEventListener("dblclick", (e) => {
    const [gx, gy] = toGraph(e);
    const hit = hitTest(app.graph, app.drawOrder(), gx, gy);
    const r = canvas.getBoundingClientRect();
    if (hit.kind === "background") app.openSearch(e.clientX - r.left, e.clientY - r.top);
    else if (hit.kind === "title") app.renameNode(hit.node);
    else if (hit.kind === "groupTitle") app.renameGroup(hit.group);
  });
  canvas.addEventListener("contextmenu", (e) => {
    e.preventDefault();
    const [gx, gy] = toGraph(e);
    const hit = hitTest(app.graph, app.drawOrder(), gx, gy);
    app.mouse = [gx, gy];
    if (hit.node) { if (!app.selected.has(hit.node.id)) app.select(hit.node); app.nodeMenu(hit.node, e.clientX, e.clientY, hit); }
    else if (hit.group) app.groupMenu(hit.group, e.clientX, e.clientY);
    else app.canvasMenu(e.clientX, e.clientY);
  });
}

// The socket under the cursor while dragging a link, and whether the types fit.
function linkTarget(app, drag, gx, gy) {
  for (const node of app.graph.nodes.values()) {
    if (node === drag.node) continue;
    const slots = drag.fromOutput ? node.inputs : node.outputs;
    for (let i = 0; i < slots.length; i++) {
      const p = drag.fromOutput ? inputPos(node, i) : outputPos(node, i);
      if (Math.abs(gx - p[0]) < 14 && Math.abs(gy - p[1]) < 10) {
        const type = slots[i].type;
        return { node, slot: i, pos: p, type, ok: typesCompatible(drag.type, type) };
      }
      if (node.collapsed) break;
    }
  }
  return null;
}
