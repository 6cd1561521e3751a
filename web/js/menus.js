// DOM overlays: context menus (nested), the node search dialog, and inline value editors.

export function closeMenus() { document.querySelectorAll(".dg-menu").forEach((m) => m.remove()); }

// items: [{label, action?, submenu?: items | () => items, disabled?, title?}] or null for a separator.
export function showMenu(items, x, y, { parent = null, filter = false, className = "" } = {}) {
  if (!parent) closeMenus();
  const menu = document.createElement("div");
  menu.className = `dg-menu ${className}`;
  menu.style.left = `${x}px`; menu.style.top = `${y}px`;
  let filterInput = null;
  if (filter) {
    filterInput = document.createElement("input");
    filterInput.className = "dg-menu-filter"; filterInput.placeholder = "filter…";
    menu.appendChild(filterInput);
  }
  const rows = [];
  for (const item of items) {
    if (!item) { const hr = document.createElement("div"); hr.className = "dg-menu-sep"; menu.appendChild(hr); continue; }
    const row = document.createElement("div");
    row.className = "dg-menu-item" + (item.submenu ? " has-sub" : "") + (item.disabled ? " disabled" : "");
    row.textContent = item.label;
    if (item.title) row.title = item.title;
    row.dataset.label = item.label;
    row.addEventListener("pointerenter", () => {
      menu.querySelectorAll(":scope ~ .dg-menu").forEach((m) => { if (m.dataset.level > menu.dataset.level) m.remove(); });
      [...document.querySelectorAll(".dg-menu")].filter((m) => Number(m.dataset.level) > Number(menu.dataset.level)).forEach((m) => m.remove());
      if (item.submenu && !item.disabled) {
        const r = row.getBoundingClientRect();
        const sub = typeof item.submenu === "function" ? item.submenu() : item.submenu;
        showMenu(sub, r.right, r.top, { parent: menu });
      }
    });
    row.addEventListener("click", (e) => {
      e.stopPropagation();
      if (item.disabled || item.submenu) return;
      closeMenus(); item.action?.();
    });
    menu.appendChild(row); rows.push(row);
  }
  menu.dataset.level = parent ? String(Number(parent.dataset.level) + 1) : "0";
  document.body.appendChild(menu);
  const r = menu.getBoundingClientRect();
  if (r.bottom > innerHeight) menu.style.top = `${Math.max(0, innerHeight - r.height)}px`;
  if (r.right > innerWidth) menu.style.left = `${Math.max(0, x - r.width)}px`;
  if (filterInput) {
    filterInput.addEventListener("input", () => {
      const q = filterInput.value.toLowerCase();
      rows.forEach((row) => { row.style.display = row.dataset.label.toLowerCase().includes(q) ? "" : "none"; });
    });
    filterInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { const first = rows.find((r) => r.style.display !== "none"); first?.click(); }
      if (e.key === "Escape") closeMenus();
      e.stopPropagation();
    });
    setTimeout(() => filterInput.focus(), 0);
  }
  return menu;
}

// Fuzzy match score: every query character must appear in order; contiguous and early matches win.
export function fuzzyScore(query, text) {
  query = query.toLowerCase(); text = text.toLowerCase();
  if (!query) return 1;
  if (text === query) return 2000;
  // Contiguous matches first, compared without spaces and punctuation ("vae decode" finds "VAEDecode");
  // the closer the name's length to the query's, the better.
  const bare = (s) => s.replace(/[\s_\-()]/g, "");
  const bt = bare(text), bq = bare(query);
  const j = bt.indexOf(bq);
  if (j >= 0) return 1000 - j - (bt.length - bq.length) * 2;
  let score = 0, t = 0, run = 0;
  for (const c of query) {
    const found = text.indexOf(c, t);
    if (found < 0) return -1;
    run = found === t ? run + 1 : 0;
    score += 10 + run * 5 - (found - t) * 0.5;
    t = found + 1;
  }
  return score;
}

// The node search dialog: options [{label, sub, value}] ; onPick(value).
export function showSearch(options, x, y, onPick) {
  closeSearch();
  const box = document.createElement("div");
  box.className = "dg-search";
  box.style.left = `${Math.min(x, innerWidth - 360)}px`; box.style.top = `${Math.min(y, innerHeight - 340)}px`;
  const input = document.createElement("input");
  input.placeholder = "Search nodes…";
  const list = document.createElement("div"); list.className = "dg-search-list";
  box.append(input, list);
  document.body.appendChild(box);
  let shown = [], active = 0;
  const render = () => {
    const q = input.value.trim();
    shown = options.map((o) => ({ o, s: Math.max(fuzzyScore(q, o.label), fuzzyScore(q, o.value) - 1) }))
      .filter((x) => x.s >= 0).sort((a, b) => b.s - a.s).slice(0, 40).map((x) => x.o);
    active = 0;
    list.replaceChildren(...shown.map((o, i) => {
      const row = document.createElement("div");
      row.className = "dg-search-item" + (i === active ? " active" : "");
      row.innerHTML = `<span></span><small></small>`;
      row.firstChild.textContent = o.label; row.lastChild.textContent = o.sub || "";
      row.addEventListener("pointerdown", (e) => { e.preventDefault(); closeSearch(); onPick(o.value); });
      return row;
    }));
  };
  input.addEventListener("input", render);
  input.addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Escape") closeSearch();
    else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      active = Math.max(0, Math.min(shown.length - 1, active + (e.key === "ArrowDown" ? 1 : -1)));
      [...list.children].forEach((c, i) => c.classList.toggle("active", i === active));
      e.preventDefault();
    } else if (e.key === "Enter" && shown[active]) { const v = shown[active].value; closeSearch(); onPick(v); }
  });
  input.addEventListener("blur", () => setTimeout(() => box.remove(), 150));
  render();
  input.focus();
}
export function closeSearch() { document.querySelectorAll(".dg-search").forEach((m) => m.remove()); }

// An inline editor over a screen rectangle; commits on Enter (single line) or blur.
export function editValue(rect, value, { multiline = false, onCommit }) {
  document.querySelectorAll(".dg-editor").forEach((e) => e.remove());
  const el = document.createElement(multiline ? "textarea" : "input");
  el.className = "dg-editor";
  el.value = value;
  Object.assign(el.style, { left: `${rect[0]}px`, top: `${rect[1]}px`, width: `${rect[2]}px`, height: `${multiline ? Math.max(rect[3], 80) : rect[3]}px` });
  document.body.appendChild(el);
  let done = false;
  const finish = (commit) => { if (done) return; done = true; if (commit) onCommit(el.value); el.remove(); };
  el.addEventListener("keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Escape") finish(false);
    if (e.key === "Enter" && (!multiline || e.ctrlKey)) { e.preventDefault(); finish(true); }
  });
  el.addEventListener("blur", () => finish(true));
  el.focus(); el.select?.();
  return el;
}

// A small modal asking for a text (e.g. a file name); resolves to the trimmed text, or null when
// cancelled (Escape, Cancel, a click outside).
export function askText(title, value = "", okLabel = "OK") {
  document.getElementById("ask-dialog")?.remove();
  return new Promise((resolve) => {
    const box = document.createElement("div");
    box.id = "ask-dialog";
    box.innerHTML = `<form class="ask-inner"><label></label><input name="value" autocomplete="off"><div class="ask-buttons"><button type="button" class="cancel">Cancel</button><button type="submit" class="primary"></button></div></form>`;
    const form = box.firstChild, input = form.querySelector("input");
    form.querySelector("label").textContent = title;
    form.querySelector("button.primary").textContent = okLabel;
    input.value = value;
    const done = (result) => { box.remove(); resolve(result); };
    form.addEventListener("submit", (e) => { e.preventDefault(); const v = input.value.trim(); done(v || null); });
    form.querySelector("button.cancel").addEventListener("click", () => done(null));
    box.addEventListener("pointerdown", (e) => { if (e.target === box) done(null); });
    input.addEventListener("keydown", (e) => { e.stopPropagation(); if (e.key === "Escape") done(null); });
    document.body.appendChild(box);
    input.focus(); input.select();
  });
}
