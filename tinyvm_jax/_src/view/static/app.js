/* tinyvm view: Browse, Row, Playground and Compare pages, and the read-only
 * page of an exported file. Plain JavaScript, no build step, no libraries.
 * Pages are hash routes (#/browse?..., #/row?..., #/play?src=..., #/compare?...)
 * so every view has a URL to share. */
"use strict";

const BUNDLE_ID = "tinyvm-bundle";
const main = () => document.getElementById("main");
let keyHandler = null;      // the step view that owns the arrow keys
let errorNames = {};        // trace error code -> message

/* ------------------------------------------------------------ helpers */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  }
  return q.toString();
}

async function api(path, params, body) {
  const url = path + (params ? "?" + query(params) : "");
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)};
  const res = await fetch(url, init);
  let data;
  try { data = await res.json(); } catch (e) { data = {error: res.statusText}; }
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function banner(kind, text, testid) {
  return h("div", {class: `banner ${kind}`, "data-testid": testid || kind}, text);
}

function showError(err) {
  main().replaceChildren(banner("error", err.message || String(err), "error"));
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, qs] = raw.split("?", 2);
  return {name: name || "browse", q: Object.fromEntries(new URLSearchParams(qs || ""))};
}

function go(name, params) {
  location.hash = `#/${name}?${query(params)}`;
}

/* ------------------------------------------------------------ assembly highlighting */
const OPS = new Set(["LOAD", "MOV", "ADD", "SUB", "MUL", "DIV", "NEG", "EQ", "LT", "JZ",
  "JMP", "PUSH", "POP", "PRINT", "NOP", "HALT", "DOUBLE", "MAX", "ABS", "MOD", "SIGN",
  "USEROP_0", "USEROP_1", "USEROP_2", "USEROP_3", "USEROP_4"]);

function highlight(line) {
  /* [element] of one line of assembly, comments included */
  const out = [];
  const semi = line.indexOf(";");
  const code = semi < 0 ? line : line.slice(0, semi);
  const re = /(L\d+\b)|(R\d+\b)|(-?\d+)|([A-Za-z_]\w*)|(\s+|.)/gi;
  let m;
  while ((m = re.exec(code)) !== null) {
    const cls = m[1] ? "tk-lab" : m[2] ? "tk-reg" : m[3] ? "tk-num"
      : m[4] && OPS.has(m[4].toUpperCase()) ? "tk-op" : null;
    out.push(cls ? h("span", {class: cls}, m[0]) : m[0]);
  }
  if (semi >= 0) out.push(h("span", {class: "tk-com"}, line.slice(semi)));
  return out;
}

/* ------------------------------------------------------------ step view */
class StepView {
  /* Program listing, step controls, registers, stack and output of a
   * row view (see model.row_view). Position p in 0..N: p = 0 is the state
   * before the first step, p = k the state after step k - 1. */
  constructor(view, opts) {
    this.view = view;
    this.opts = opts || {};
    this.n = view.steps.length;
    this.pos = 0;
    this.timer = null;
    this.el = this.build();
    keyHandler = this;
    this.set(this.opts.step !== undefined ? this.opts.step : 0, false);
    /* once on the page, scroll the listing to the marked line */
    requestAnimationFrame(() => this.set(this.pos, false));
  }

  build() {
    const v = this.view;
    this.lineEls = v.lines.map((line, i) => h("div", {class: "ln", "data-line": i},
      h("span", {class: "no"}, i), h("span", {class: "mark"}), h("span", {class: "txt"},
        highlight(line.text))));
    this.program = h("div", {class: "program", "data-testid": "program"}, this.lineEls);
    this.scrub = h("input", {type: "range", min: 0, max: this.n, value: 0,
      "data-testid": "scrubber", "aria-label": "step",
      oninput: (e) => this.set(+e.target.value)});
    this.posEl = h("span", {class: "pos", "data-testid": "position"});
    const b = (label, title, fn, id) => h("button", {title, onclick: fn, "data-testid": id}, label);
    const controls = h("div", {class: "controls"},
      b("\u00AB first", "first (r)", () => this.set(0), "first"),
      b("\u2190 back", "back (\u2190)", () => this.set(this.pos - 1), "back"),
      this.playBtn = b("play", "play / pause (space)", () => this.toggle(), "play"),
      b("forward \u2192", "forward (\u2192)", () => this.set(this.pos + 1), "forward"),
      b("last \u00BB", "last", () => this.set(this.n), "last"),
      this.scrub, this.posEl);
    this.regEls = [];
    for (let r = 0; r < 8; r++) {
      this.regEls.push(h("div", {class: "reg", "data-testid": `reg-${r}`, "data-r": r},
        h("div", {class: "name"}, `R${r}`), h("div", {class: "val"}, "0")));
    }
    this.stackEl = h("div", {class: "stack", "data-testid": "stack"});
    this.outEl = h("div", {class: "outs", "data-testid": "output"});
    this.noteEl = h("div", {class: "muted", "data-testid": "step-note"});
    const state = h("div", {},
      controls, this.noteEl,
      h("h3", {}, "Registers"), h("div", {class: "regs"}, this.regEls),
      h("div", {class: "state-cols"},
        h("div", {}, h("h3", {}, "Stack (top first)"), this.stackEl),
        h("div", {}, h("h3", {}, "Output"), this.outEl)));
    const kids = [];
    if (v.fault) {
      kids.push(banner("fault", `Fault: ${v.fault.message}` +
        (v.fault.pc >= 0 ? ` (at instruction ${v.fault.pc}, after ${this.n} steps)` : ""),
        "fault"));
    }
    kids.push(h("div", {class: "stepview"},
      h("div", {}, h("h3", {}, `Program (${v.lines.length} instructions)`), this.program),
      state));
    return h("div", {}, kids);
  }

  set(p, flash = true) {
    p = Math.max(0, Math.min(this.n, p | 0));
    this.pos = p;
    const v = this.view;
    const st = p > 0 ? v.steps[p - 1] : null;
    const regs = st ? st.regs : [0, 0, 0, 0, 0, 0, 0, 0];
    const stack = st ? st.stack : [];
    this.scrub.value = p;
    this.posEl.textContent = `step ${p} / ${this.n}`;
    /* program markers */
    for (const el of this.lineEls) el.classList.remove("current", "next", "fault");
    const cur = st ? st.pc : -1;
    const next = p < this.n ? v.steps[p].pc : (v.fault && v.fault.pc >= 0 ? v.fault.pc : -1);
    if (cur >= 0 && this.lineEls[cur]) {
      this.lineEls[cur].classList.add("current");
      this.scrollTo(this.lineEls[cur]);
    }
    if (next >= 0 && next !== cur && this.lineEls[next]) {
      this.lineEls[next].classList.add(p === this.n && v.fault ? "fault" : "next");
      if (cur < 0) this.scrollTo(this.lineEls[next]);
    }
    /* registers */
    const pred = this.opts.predicted && st ? this.opts.predicted[p - 1] : null;
    for (let r = 0; r < 8; r++) {
      const el = this.regEls[r];
      el.querySelector(".val").textContent = regs[r];
      el.classList.remove("written", "flash", "wrong");
      el.querySelector(".badge")?.remove();
      el.querySelector(".pred")?.remove();
      if (st && st.written === r) {
        el.classList.add("written");
        if (flash) { void el.offsetWidth; el.classList.add("flash"); }
        if (st.clamped) {
          el.append(h("span", {class: "badge", "data-testid": "clamp",
            title: `the result ${st.raw} was clamped to ${regs[r]}`}, "clamped"));
        }
      }
      if (pred && pred.regs && r in pred.regs && pred.regs[r] !== regs[r]) {
        el.classList.add("wrong");
        el.append(h("div", {class: "pred"}, `predicted ${pred.regs[r]}`));
      }
    }
    /* stack, top first */
    this.stackEl.replaceChildren(...(stack.length ? stack.map((x, i) =>
      h("div", {class: "cell" + (i === stack.length - 1 ? " top" : ""), "data-testid": "stack-cell"},
        h("span", {}, x), h("span", {class: "slot"}, `#${i}`))) :
      [h("div", {class: "empty"}, "empty")]));
    /* output: printed so far, the one printed now highlighted */
    const outs = [];
    let k = 0;
    for (let t = 0; t < this.n; t++) {
      const e = v.steps[t].emitted;
      if (e === null || e === undefined) continue;
      outs.push(h("span", {class: "v" + (t === p - 1 ? " now" : t >= p ? " pending" : ""),
        title: `printed at step ${t + 1}`, "data-testid": "out-value"}, e));
      k++;
    }
    this.outEl.replaceChildren(...(outs.length ? outs : [h("span", {class: "muted"}, "nothing printed")]));
    let note = st ? `ran instruction ${st.pc}: ${v.lines[st.pc] ? v.lines[st.pc].text : "?"}` :
      "initial state: all registers 0, empty stack";
    if (st && st.emitted !== null && st.emitted !== undefined) note += ` \u2192 printed ${st.emitted}`;
    if (p === this.n && v.fault) note += ` \u2014 then: ${v.fault.message}`;
    else if (p === this.n && this.n) note += v.halted ? " \u2014 halted" : "";
    this.noteEl.textContent = note;
    if (this.opts.onstep) this.opts.onstep(p);
  }

  scrollTo(el) {
    const box = this.program;
    if (el.offsetTop < box.scrollTop || el.offsetTop > box.scrollTop + box.clientHeight - 24) {
      box.scrollTop = el.offsetTop - box.clientHeight / 3;
    }
  }

  toggle() {
    if (this.timer) { clearInterval(this.timer); this.timer = null; }
    else {
      if (this.pos >= this.n) this.set(0);
      this.timer = setInterval(() => {
        if (this.pos >= this.n) this.toggle(); else this.set(this.pos + 1);
      }, 350);
    }
    this.playBtn.textContent = this.timer ? "pause" : "play";
  }

  key(e) {
    if (!this.el.isConnected) return false;
    if (e.key === "ArrowRight") this.set(this.pos + 1);
    else if (e.key === "ArrowLeft") this.set(this.pos - 1);
    else if (e.key === " ") this.toggle();
    else if (e.key === "r" || e.key === "R") this.set(0);
    else return false;
    return true;
  }
}

document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT")) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (keyHandler && keyHandler.key(e)) e.preventDefault();
});

/* ------------------------------------------------------------ renders and meta */
function metaPanel(view, extra) {
  const m = view.meta || {};
  const chips = [];
  for (const k of ["dataset", "group", "index", "format", "tier", "split", "bucket", "seed"]) {
    if (m[k] !== undefined && m[k] !== null) chips.push(h("span", {class: "chip"}, `${k} `, h("b", {}, m[k])));
  }
  for (const [k, val] of Object.entries(m.axes || {})) {
    chips.push(h("span", {class: "chip"}, `${k} = `, h("b", {}, String(val))));
  }
  chips.push(h("span", {class: "chip"}, "steps ", h("b", {}, view.steps.length)));
  chips.push(h("span", {class: "chip"}, "output ", h("b", {}, JSON.stringify(view.output))));
  return h("div", {class: "panel", "data-testid": "meta"}, h("h3", {}, "Meta and axes"), chips, extra || null);
}

function tokens(names, ids) {
  return h("div", {class: "tokens"}, names.map((name, i) => h("span", {
    class: "tok" + (name === "NEWLINE" ? " nl" : "")}, name, h("sub", {}, ids[i]))));
}

function rendersPanel(view) {
  if (!view.renders || !view.renders.length) return null;
  return h("div", {class: "panel", "data-testid": "renders"}, h("h3", {}, "Renders"),
    view.renders.map((r) => h("div", {},
      h("div", {}, h("b", {}, r.name), h("span", {class: "muted"},
        ` input ${r.input_ids.length} tokens, target ${r.target_ids.length} tokens`)),
      h("div", {class: "render"},
        h("div", {}, h("h3", {}, "input text"), h("pre", {}, r.input_text)),
        h("div", {}, h("h3", {}, "input ids"), tokens(r.input_tokens, r.input_ids))),
      h("div", {class: "render"},
        h("div", {}, h("h3", {}, "target text"), h("pre", {"data-testid": `target-${r.name}`}, r.target_text)),
        h("div", {}, h("h3", {}, "target ids"), tokens(r.target_tokens, r.target_ids))))));
}

/* ------------------------------------------------------------ Browse */
let catalog = null;
async function loadCatalog() {
  if (!catalog) {
    catalog = await api("/api/datasets");
    errorNames = catalog.errors || {};
  }
  return catalog;
}

async function pageBrowse(q) {
  const cat = await loadCatalog();
  if (!cat.datasets.length) {
    main().replaceChildren(banner("info", "No datasets: start the viewer with " +
      "python -m tinyvm_jax.view DATASET_DIR. The Playground works without one."));
    return;
  }
  const ds = cat.datasets[+(q.ds || 0)] || cat.datasets[0];
  const group = q.group || ds.groups[0].name;
  const params = {ds: ds.id, group, fmt: q.fmt || "", page: q.page || 0, size: q.size || 50};
  const filters = {};
  for (const k of [...ds.axis_names, "value", "error"]) if (q[k]) filters[k] = q[k];
  const data = await api("/api/rows", {...params, ...filters});
  const form = h("form", {class: "panel", "data-testid": "filters", onsubmit: (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const next = {ds: f.get("ds"), group: f.get("group"), fmt: f.get("fmt"), page: 0};
    for (const k of [...ds.axis_names, "value", "error"]) next[k] = (f.get(k) || "").trim();
    go("browse", next);
  }});
  const sel = (name, options, value, onchange) => h("select", {name, onchange}, options.map(
    ([v, label]) => h("option", {value: v, selected: String(v) === String(value)}, label)));
  const submit = () => form.requestSubmit();
  form.append(
    h("label", {class: "field"}, "dataset", sel("ds", cat.datasets.map((d) =>
      [d.id, `${d.name} (${d.tier})`]), ds.id, () => go("browse", {ds: form.ds.value}))),
    h("label", {class: "field"}, "split / bucket", sel("group", ds.groups.map((g) =>
      [g.name, `${g.name}${g.rows !== null ? ` (${g.rows.toLocaleString()})` : ""}`]), group, submit)),
    h("label", {class: "field"}, "format", sel("fmt", [["", "fastest"], ...ds.formats.map((f) => [f, f])],
      q.fmt || "", submit)),
    ...ds.axis_names.map((a) => h("label", {class: "field"}, a,
      h("input", {type: "text", name: a, value: q[a] || "", placeholder: "e.g. 8 or 8-16"}))),
    h("label", {class: "field"}, "printed value", h("input", {type: "text", name: "value",
      value: q.value || "", placeholder: "e.g. 0 or -5-5"})),
    h("label", {class: "field"}, "error", sel("error", [["", "any row"], ["none", "no error"],
      ["any", "ended in an error"], ...Object.entries(errorNames).filter(([c]) => c !== "0")
        .map(([c, m]) => [c, m])], q.error || "", submit)),
    h("button", {class: "primary", type: "submit"}, "Filter"));
  const jump = h("form", {class: "panel", onsubmit: async (e) => {
    e.preventDefault();
    const kind = e.target.kind.value, val = e.target.target.value.trim();
    try {
      let i = val;
      if (kind === "seed") i = (await api("/api/find", {ds: ds.id, group, fmt: q.fmt || "", seed: val})).index;
      go("row", {ds: ds.id, group, fmt: q.fmt || "", i});
    } catch (err) { jump.append(banner("error", err.message)); }
  }}, h("label", {class: "field"}, "jump to", sel("kind", [["index", "row index"], ["seed", "seed"]], "index")),
  h("label", {class: "field"}, "value", h("input", {type: "text", name: "target", "data-testid": "jump"})),
  h("button", {type: "submit"}, "Go"));
  const page = data.page, pages = Math.max(1, Math.ceil(data.matched / data.size));
  const table = h("table", {class: "grid", "data-testid": "rows"},
    h("tr", {}, h("th", {}, "index"), h("th", {}, "seed"), ...ds.axis_names.map((a) => h("th", {}, a)),
      h("th", {}, "printed"), h("th", {}, "error")),
    data.rows.map((r) => h("tr", {class: "link", onclick: () => go("row",
      {ds: ds.id, group, fmt: q.fmt || "", i: r.index})},
      h("td", {class: "num"}, h("a", {href: `#/row?${query({ds: ds.id, group, fmt: q.fmt || "", i: r.index})}`}, r.index)),
      h("td", {class: "mono"}, r.seed),
      ...ds.axis_names.map((a) => h("td", {class: "num"}, r.axes[a])),
      h("td", {class: "mono"}, r.output.join(", ") + (r.num_output > r.output.length ? ", ..." : "")),
      h("td", {}, r.error ? (errorNames[r.error] || `error ${r.error}`) : ""))));
  const nav = (p) => go("browse", {...params, ...filters, page: p});
  main().replaceChildren(
    h("h2", {}, `${ds.name} \u00b7 ${group}`, h("span", {class: "muted"},
      `  tier ${ds.tier}, seed base ${ds.seed_base}, ${data.format}`)),
    form, jump,
    h("div", {class: "panel"},
      h("div", {class: "muted", "data-testid": "matched"},
        `${data.matched.toLocaleString()} of ${data.total.toLocaleString()} rows match`),
      table,
      h("div", {class: "pager"},
        h("button", {disabled: page <= 0, onclick: () => nav(page - 1)}, "\u2190 prev"),
        h("span", {}, `page ${page + 1} of ${pages}`),
        h("button", {disabled: page + 1 >= pages, onclick: () => nav(page + 1)}, "next \u2192"))));
}

/* ------------------------------------------------------------ Row */
async function pageRow(q) {
  await loadCatalog();
  const params = {ds: q.ds || 0, group: q.group || "train", fmt: q.fmt || "", i: q.i || 0};
  const view = await api("/api/row", params);
  showRow(view, q, params);
}

function showRow(view, q, params) {
  const step = q.step !== undefined ? +q.step : 0;
  const sv = new StepView(view, {step});
  const kids = [];
  if (params) {
    const i = +params.i;
    kids.push(h("div", {class: "controls"},
      h("a", {href: `#/browse?${query({ds: params.ds, group: params.group, fmt: params.fmt})}`}, "\u2190 back to the list"),
      h("span", {}, " "),
      i > 0 ? h("a", {href: `#/row?${query({...params, i: i - 1})}`}, "previous row") : null,
      h("a", {href: `#/row?${query({...params, i: i + 1})}`}, "next row"),
      h("a", {href: `/api/export?${query(params)}`, "data-testid": "export"}, "export as HTML")));
  }
  const m = view.meta;
  kids.push(h("h2", {}, `${m.dataset || ""} \u00b7 ${m.group || ""} \u00b7 row ${m.index}`));
  kids.push(h("div", {class: "panel"}, sv.el));
  kids.push(metaPanel(view));
  kids.push(rendersPanel(view));
  main().replaceChildren(...kids.filter(Boolean));
}

/* ------------------------------------------------------------ Playground */
function b64encode(text) {
  const bytes = new TextEncoder().encode(text);
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function b64decode(text) {
  try {
    const s = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
    return new TextDecoder().decode(Uint8Array.from(s, (c) => c.charCodeAt(0)));
  } catch (e) { return null; }
}

async function pagePlay(q) {
  const ex = (await api("/api/examples")).examples;
  const initial = (q.src && b64decode(q.src)) || ex[0].source;
  const ta = h("textarea", {spellcheck: "false", "data-testid": "editor", "aria-label": "program"});
  ta.value = initial;
  const hl = h("pre", {class: "hl", "aria-hidden": "true"});
  const gutter = h("div", {class: "gutter", "data-testid": "gutter"});
  const diagsEl = h("ul", {class: "diags", "data-testid": "diagnostics"});
  const out = h("div", {"data-testid": "play-view"});
  const status = h("span", {class: "muted"});
  let diags = [], timer = null, seq = 0;
  const paint = () => {
    const lines = ta.value.split("\n");
    const sev = {};
    for (const d of diags) if (sev[d.line] !== "error") sev[d.line] = d.severity;
    hl.replaceChildren(...lines.map((line, i) => {
      const s = sev[i + 1];
      return h("span", {class: "line" + (s === "error" ? " lerr" : s === "warning" ? " lwarn" : "")},
        highlight(line));
    }));
    gutter.replaceChildren(...lines.map((_, i) => h("div", {class: sev[i + 1] || null,
      "data-line": i + 1, title: diags.filter((d) => d.line === i + 1).map((d) => d.message).join("\n")}, i + 1)));
  };
  const run = async () => {
    const mine = ++seq;
    history.replaceState(null, "", `#/play?src=${b64encode(ta.value)}`);
    status.textContent = "running\u2026";
    let res;
    try { res = await api("/api/run", null, {source: ta.value}); }
    catch (err) { status.textContent = ""; out.replaceChildren(banner("error", err.message)); return; }
    if (mine !== seq) return;
    diags = res.diagnostics;
    paint();
    diagsEl.replaceChildren(...diags.map((d) => h("li", {class: d.severity, "data-line": d.line,
      onclick: () => focusLine(d.line)}, `line ${d.line}, column ${d.column}: ${d.message}`)));
    status.textContent = res.view ? `${res.view.steps.length} steps` : "not run";
    if (res.view) {
      const sv = new StepView(res.view, {step: res.view.steps.length});
      out.replaceChildren(sv.el);
    } else {
      out.replaceChildren(banner("error", "The program does not parse; fix the error above to run it."));
    }
  };
  const focusLine = (line) => {
    const lines = ta.value.split("\n");
    let at = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1;
    ta.focus();
    ta.setSelectionRange(at, at + (lines[line - 1] || "").length);
  };
  ta.addEventListener("input", () => {
    paint();
    clearTimeout(timer);
    timer = setTimeout(run, 300);
  });
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Tab") {
      e.preventDefault();
      ta.setRangeText("    ", ta.selectionStart, ta.selectionEnd, "end");
      ta.dispatchEvent(new Event("input"));
    }
  });
  const playlist = h("ul", {class: "playlist", "data-testid": "examples"}, ex.map((x) => h("li", {
    onclick: (e) => {
      ta.value = x.source;
      for (const li of playlist.children) li.classList.remove("active");
      e.target.classList.add("active");
      paint();
      run();
    }}, x.name)));
  const share = h("button", {onclick: async () => {
    const url = location.href;
    try { await navigator.clipboard.writeText(url); share.textContent = "link copied"; }
    catch (e) { prompt("Share this URL:", url); }
  }}, "copy share link");
  main().replaceChildren(
    h("h2", {}, "Playground"),
    h("div", {class: "row-flex"},
      h("div", {class: "panel grow"},
        h("div", {class: "controls"}, h("h3", {}, "Program"), status, share),
        h("div", {class: "editor"}, gutter, h("div", {class: "code"}, hl, ta)), diagsEl),
      h("div", {class: "panel"}, h("h3", {}, "Examples"), playlist,
        h("p", {class: "muted"}, "Runs on the JAX interpreter: at most 256 instructions and 4,096 steps."))),
    h("div", {class: "panel"}, out));
  paint();
  run();
}

/* ------------------------------------------------------------ Compare */
async function pageCompare(q) {
  const cat = await loadCatalog();
  if (!cat.predictions.length) {
    main().replaceChildren(banner("info", "No predictions: start the viewer with " +
      "--predictions FILE (the format of tinyvm_jax.data.write_predictions)."));
    return;
  }
  if (q.k !== undefined) return showCompare(await api("/api/compare", {p: q.p || 0, k: q.k}), q);
  const p = cat.predictions[+(q.p || 0)] || cat.predictions[0];
  const data = await api("/api/failures", {p: p.id, group: q.group || "", page: q.page || 0});
  const acc = h("table", {class: "grid", "data-testid": "accuracy"},
    h("tr", {}, h("th", {}, "split / bucket"), h("th", {}, "rows"), h("th", {}, "exact"),
      h("th", {}, "accuracy"), h("th", {}, "mean score"), h("th", {}, "")),
    p.buckets.map((b) => h("tr", {class: "link", onclick: () => go("compare", {p: p.id, group: b.group})},
      h("td", {}, b.group), h("td", {class: "num"}, b.rows), h("td", {class: "num"}, b.exact),
      h("td", {class: "num"}, `${(100 * b.accuracy).toFixed(1)}%`),
      h("td", {class: "num"}, b.mean_score.toFixed(3)),
      h("td", {}, h("span", {class: "bar"}, h("span", {style: null, "data-w": b.accuracy}))))));
  for (const bar of acc.querySelectorAll("[data-w]")) bar.style.width = `${100 * +bar.dataset.w}%`;
  const pages = Math.max(1, Math.ceil(data.total / data.size));
  const fails = h("table", {class: "grid", "data-testid": "failures"},
    h("tr", {}, h("th", {}, "#"), h("th", {}, "split / bucket"), h("th", {}, "index"),
      h("th", {}, "truth"), h("th", {}, "predicted"), h("th", {}, "score")),
    data.rows.map((r) => h("tr", {class: "link", onclick: () => go("compare", {p: p.id, k: r.k})},
      h("td", {class: "num"}, r.k), h("td", {}, r.group), h("td", {class: "num"}, r.index),
      h("td", {class: "mono"}, r.target_text.replace(/\n/g, "\u21B5 ").slice(0, 60)),
      h("td", {class: "mono"}, r.predicted_text.replace(/\n/g, "\u21B5 ").slice(0, 60)),
      h("td", {class: "num"}, r.score))));
  const nav = (pg) => go("compare", {p: p.id, group: q.group || "", page: pg});
  main().replaceChildren(
    h("h2", {}, `Compare: ${p.name}`, h("span", {class: "muted"},
      `  ${p.rows.toLocaleString()} predictions, model ${p.models.join(", ")}, render ${p.renders.join(", ")}`)),
    cat.predictions.length > 1 ? h("div", {class: "controls"}, cat.predictions.map((x) =>
      h("a", {href: `#/compare?p=${x.id}`}, x.name))) : null,
    h("div", {class: "panel"}, h("h3", {}, "Accuracy per bucket"), acc),
    h("div", {class: "panel"}, h("h3", {}, `Failing rows${q.group ? ` of ${q.group}` : ""}: ${data.total}`),
      fails, h("div", {class: "pager"},
        h("button", {disabled: data.page <= 0, onclick: () => nav(data.page - 1)}, "\u2190 prev"),
        h("span", {}, `page ${data.page + 1} of ${pages}`),
        h("button", {disabled: data.page + 1 >= pages, onclick: () => nav(data.page + 1)}, "next \u2192"))));
}

function showCompare(c, q) {
  const v = c.view, p = c.prediction, d = c.divergence;
  const kids = [];
  if (q) {
    kids.push(h("div", {class: "controls"},
      h("a", {href: `#/compare?p=${q.p || 0}`}, "\u2190 back to the failing rows"),
      h("a", {href: `/api/export?${query({p: q.p || 0, k: q.k})}`, "data-testid": "export"}, "export as HTML")));
  }
  kids.push(h("h2", {}, `${v.meta.group} \u00b7 row ${p.index}`, h("span", {class: "muted"},
    `  model ${p.model}, render ${p.render}, truth from ${c.truth_source}`)));
  if (v.fault) kids.push(banner("fault", `This row's run ends in a fault: ${v.fault.message}`, "fault-bundle"));
  const cot = c.cot && c.cot.first;
  if (cot) {
    const what = cot.kind === "register" ?
      `first wrong register: R${cot.register} at step ${cot.step + 1} (predicted ${cot.predicted ?? "nothing"}, truth ${cot.truth})` :
      cot.kind === "instruction" ? `first wrong instruction at step ${cot.step + 1}: predicted "${cot.predicted}", truth "${cot.truth}"` :
      `${cot.kind} at step ${cot.step + 1}`;
    kids.push(banner("error", what, "cot-divergence"));
  }
  if (d) {
    kids.push(banner("error", d.unparseable ? "The prediction has no readable values (unparseable)." :
      `First divergence at value ${d.index}: printed at step ${d.step + 1}.`, "divergence"));
  } else if (!cot) {
    kids.push(banner("ok", "The predicted values equal the truth.", "agree"));
  }
  const tv = c.truth_values, pv = c.predicted_values || [];
  const rows = [];
  for (let i = 0; i < Math.max(tv.length, pv.length, 1); i++) {
    const bad = d && i >= d.index && (tv[i] !== pv[i]);
    rows.push(h("tr", {class: d && i === d.index ? "anchor" : null, id: d && i === d.index ? "first-divergence" : null,
      "data-testid": d && i === d.index ? "anchor" : null},
      h("td", {class: "num"}, i), h("td", {class: "mono"}, tv[i] ?? "\u2014"),
      h("td", {class: "mono" + (bad ? " diverge" : "")}, c.predicted_values === null ? "unparseable" : (pv[i] ?? "\u2014"))));
  }
  const values = h("table", {class: "grid values", "data-testid": "values"},
    h("tr", {}, h("th", {}, "value"), h("th", {}, "truth"), h("th", {}, "predicted")), rows);
  const texts = h("div", {class: "render"},
    h("div", {}, h("h3", {}, "target text (truth)"), h("pre", {}, p.target_text)),
    h("div", {}, h("h3", {}, "predicted text"), h("pre", {"data-testid": "predicted-text"}, p.predicted_text)));
  const predicted = c.cot ? c.cot.steps : null;
  const step = c.anchor_step !== null && c.anchor_step !== undefined ? c.anchor_step + 1 : v.steps.length;
  const sv = new StepView(v, {step, predicted});
  kids.push(h("div", {class: "row-flex"},
    h("div", {class: "panel"}, h("h3", {}, "Values side by side"), values),
    h("div", {class: "panel grow"}, texts)));
  kids.push(h("div", {class: "panel"}, sv.el));
  kids.push(metaPanel(v));
  main().replaceChildren(...kids);
  const anchor = document.getElementById("first-divergence");
  if (anchor) anchor.scrollIntoView({block: "center"});
}

/* ------------------------------------------------------------ routing */
const PAGES = {browse: pageBrowse, row: pageRow, play: pagePlay, compare: pageCompare};

async function route() {
  const {name, q} = parseHash();
  for (const a of document.querySelectorAll("#tabs a")) {
    a.classList.toggle("active", a.dataset.tab === name || (name === "row" && a.dataset.tab === "browse"));
  }
  keyHandler = null;
  const page = PAGES[name] || pageBrowse;
  try { await page(q); } catch (err) { showError(err); }
}

function start() {
  const bundle = document.getElementById(BUNDLE_ID);
  if (bundle) {   /* an exported file: draw its data, no server */
    const data = JSON.parse(bundle.textContent);
    if (data.kind === "compare") showCompare(data, null); else showRow(data, {}, null);
    return;
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
