// Where things are on a node (sockets, widgets, images) and what lies under a graph-space point.
import { SLOT_H, TEXTAREA_H, TITLE_H, WIDGET_H } from "./graph.js";

export function isReroute(node) { return node.type === "Reroute"; }
export function hasTitle(node) { return !isReroute(node); }

export function collapsedWidth(node) { return Math.max(80, node.title.length * 7.5 + 40); }

// Bounds including the title bar: [x, y, w, h].
export function nodeBounds(node) {
  if (isReroute(node)) return [node.pos[0], node.pos[1], node.size[0], node.size[1]];
  if (node.collapsed) return [node.pos[0], node.pos[1] - TITLE_H, collapsedWidth(node), TITLE_H];
  return [node.pos[0], node.pos[1] - TITLE_H, node.size[0], node.size[1] + TITLE_H];
}

export function inputPos(node, i) {
  if (isReroute(node)) return [node.pos[0] + 8, node.pos[1] + node.size[1] / 2];
  if (node.collapsed) return [node.pos[0], node.pos[1] - TITLE_H / 2];
  return [node.pos[0] + 10, node.pos[1] + 4 + i * SLOT_H + SLOT_H / 2];
}
export function outputPos(node, i) {
  if (isReroute(node)) return [node.pos[0] + node.size[0] - 8, node.pos[1] + node.size[1] / 2];
  if (node.collapsed) return [node.pos[0] + collapsedWidth(node), node.pos[1] - TITLE_H / 2];
  return [node.pos[0] + node.size[0] - 10, node.pos[1] + 4 + i * SLOT_H + SLOT_H / 2];
}

// Rectangles of the visible widgets in graph space: [{widget, rect: [x, y, w, h]}].
export function widgetRects(node) {
  if (node.collapsed || isReroute(node)) return [];
  const rows = Math.max(node.inputs.length, node.outputs.length);
  let y = node.pos[1] + rows * SLOT_H + 8;
  const out = [];
  for (const w of node.visibleWidgets()) {
    const h = w.kind === "textarea" ? TEXTAREA_H : WIDGET_H;
    out.push({ widget: w, rect: [node.pos[0] + 10, y, node.size[0] - 20, h] });
    y += h + 4;
  }
  return out;
}
export function imageArea(node) {
  const rects = widgetRects(node);
  const rows = Math.max(node.inputs.length, node.outputs.length);
  const top = rects.length ? rects[rects.length - 1].rect[1] + rects[rects.length - 1].rect[3] + 4 : node.pos[1] + rows * SLOT_H + 8;
  return [node.pos[0] + 6, top, node.size[0] - 12, node.pos[1] + node.size[1] - top - 6];
}

const inRect = (x, y, r) => x >= r[0] && y >= r[1] && x <= r[0] + r[2] && y <= r[1] + r[3];

// What is under the point (graph space)? Nodes are tested top-most first (last drawn).
export function hitTest(graph, order, x, y) {
  for (let k = order.length - 1; k >= 0; k--) {
    const node = graph.nodes.get(order[k]);
    if (!node) continue;
    const b = nodeBounds(node);
    if (!inRect(x, y, [b[0] - 12, b[1] - 4, b[2] + 24, b[3] + 8])) continue;
    for (let i = 0; i < node.outputs.length; i++) {
      const p = outputPos(node, i);
      if (Math.abs(x - p[0]) < 12 && Math.abs(y - p[1]) < SLOT_H / 2) return { kind: "output", node, slot: i };
      if (node.collapsed || isReroute(node)) break;
    }
    for (let i = 0; i < node.inputs.length; i++) {
      const p = inputPos(node, i);
      if (Math.abs(x - p[0]) < 12 && Math.abs(y - p[1]) < SLOT_H / 2) return { kind: "input", node, slot: i };
      if (node.collapsed || isReroute(node)) break;
    }
    if (!inRect(x, y, b)) continue;
    if (hasTitle(node) && y < node.pos[1]) {
      if (x < b[0] + 22) return { kind: "collapse", node };
      return { kind: "title", node };
    }
    for (const { widget, rect } of widgetRects(node)) if (inRect(x, y, rect)) return { kind: "widget", node, widget, rect };
    if (!node.collapsed && !isReroute(node) && x > b[0] + b[2] - 12 && y > b[1] + b[3] - 12) return { kind: "resize", node };
    return { kind: "body", node };
  }
  for (let g = graph.groups.length - 1; g >= 0; g--) {
    const grp = graph.groups[g];
    const [gx, gy, gw, gh] = grp.bounding;
    if (inRect(x, y, [gx + gw - 14, gy + gh - 14, 14, 14])) return { kind: "groupResize", group: grp };
    if (inRect(x, y, [gx, gy, gw, 34])) return { kind: "groupTitle", group: grp };
  }
  return { kind: "background" };
}

export function nodesInsideRect(graph, r) {
  const out = [];
  for (const node of graph.nodes.values()) {
    const b = nodeBounds(node);
    if (b[0] < r[0] + r[2] && b[0] + b[2] > r[0] && b[1] < r[1] + r[3] && b[1] + b[3] > r[1]) out.push(node);
  }
  return out;
}
export function normRect(x0, y0, x1, y1) { return [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)]; }
