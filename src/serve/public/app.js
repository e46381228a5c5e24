// The dashboard page: one module, no framework. Each view fetches JSON from the server and draws it
// with DOM calls (text always as textContent); charts are Vega specs the server compiled from the
// project's chart builders, drawn by vega's View. Views of a run in progress poll the server and
// update in place, without reloading the page.
/* global vega */

const main = document.getElementById("main")
const live = document.getElementById("live")
const POLL_MS = 1000

/** An element with attributes and children (strings become text nodes). */
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v)
    else el.setAttribute(k, v === true ? "" : String(v))
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c))
  return el
}
const SVG = "http://www.w3.org/2000/svg"
const s = (tag, attrs = {}, ...children) => {
  const el = document.createElementNS(SVG, tag)
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v))
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)))
  return el
}

const api = async (path) => {
  const r = await fetch(path)
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`)
  return r.json()
}
const time = (ms) => (ms === null ? "-" : new Date(ms).toISOString().replace("T", " ").slice(0, 19))
const seconds = (v) => (v === null || v === undefined ? "-" : v < 60 ? `${v.toFixed(1)} s` : `${Math.floor(v / 60)} min ${Math.round(v % 60)} s`)
const badge = (state) => h("span", { class: `badge state-${state}` }, state)
const runLink = (id) => h("a", { href: `/run/${encodeURIComponent(id)}` }, id)
const nodeHref = (run, name) => `/node/${encodeURIComponent(run)}?name=${encodeURIComponent(name)}`
const fileUrl = (run, path, route = "files") => `/api/runs/${encodeURIComponent(run)}/${route}/${path.split("/").map(encodeURIComponent).join("/")}`
const show = (...children) => main.replaceChildren(...children.filter((c) => c !== null))

/** Re-runs `f` every POLL_MS while it returns true; the view that started it is gone once the page navigates. */
const poll = (f) => {
  const tick = async () => {
    let again = false
    try {
      again = await f()
    } catch (e) {
      live.textContent = `update failed: ${e.message}`
      again = true
    }
    live.textContent = again ? `live: updated ${new Date().toLocaleTimeString()}` : ""
    if (again) setTimeout(tick, POLL_MS)
  }
  return tick()
}

// ------------------------------------------------------------------------------ charts

const drawChart = async (container, spec) => {
  const view = new vega.View(vega.parse(spec), { renderer: "svg", container, hover: true })
  await view.runAsync()
  return view
}

const chartBox = (spec) => {
  const box = h("div", { class: "chart" })
  drawChart(box, spec).catch((e) => box.append(h("p", { class: "error" }, `chart: ${e.message}`)))
  return box
}

// ------------------------------------------------------------------------------ tables

const table = (head, rows) => h("table", {}, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows))

/** Any JSON value as nested tables: objects as key/value rows, arrays of objects as one row each. */
const jsonTable = (v) => {
  if (v === null || typeof v !== "object") return typeof v === "number" ? h("span", { class: "num" }, String(v)) : String(v)
  if (Array.isArray(v)) {
    if (v.length > 0 && v.every((x) => x !== null && typeof x === "object" && !Array.isArray(x))) {
      const keys = [...new Set(v.flatMap((x) => Object.keys(x)))]
      return table(keys, v.map((x) => h("tr", {}, keys.map((k) => h("td", {}, k in x ? jsonTable(x[k]) : "")))))
    }
    return v.every((x) => x === null || typeof x !== "object") ? v.map(String).join(", ") : h("ol", {}, v.map((x) => h("li", {}, jsonTable(x))))
  }
  return h("table", {}, h("tbody", {}, Object.entries(v).map(([k, x]) => h("tr", {}, h("th", {}, k), h("td", {}, jsonTable(x))))))
}

const csvTable = (text) => {
  // RFC 4180: quoted fields may hold commas, quotes (doubled) and newlines
  const rows = [[]]
  let field = ""
  let quoted = false
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') (field += '"'), i++
      else if (c === '"') quoted = false
      else field += c
    } else if (c === '"') quoted = true
    else if (c === ",") rows.at(-1).push(field), (field = "")
    else if (c === "\n") rows.at(-1).push(field), (field = ""), rows.push([])
    else if (c !== "\r") field += c
  }
  if (field !== "" || rows.at(-1).length > 0) rows.at(-1).push(field)
  const body = rows.filter((r) => r.length > 1 || r[0] !== undefined)
  return table(body[0] ?? [], body.slice(1).map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))
}

// ------------------------------------------------------------------------------ runs list

const runsView = async () => {
  const filter = h("input", { type: "search", placeholder: "filter: pipeline, run id, status…", id: "filter" })
  const status = h("select", { id: "status" }, ["", "running", "succeeded", "failed", "interrupted"].map((v) => h("option", { value: v }, v || "any status")))
  const compare = h("a", { id: "compare", href: "#", class: "muted" }, "compare the two selected runs")
  const list = table(["", "run", "status", "pipeline", "started", "duration", "ran", "cached", "failed"], [])
  list.id = "runs"
  const body = list.querySelector("tbody")
  const selected = new Set()
  const syncCompare = () => {
    const [a, b] = [...selected]
    compare.setAttribute("href", selected.size === 2 ? `/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}` : "#")
    compare.className = selected.size === 2 ? "" : "muted"
  }
  let runs = []
  const render = () => {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean)
    const shown = runs.filter((r) => (status.value === "" || r.status === status.value) && words.every((w) => `${r.id} ${r.pipeline} ${r.status} ${r.file}`.toLowerCase().includes(w)))
    body.replaceChildren(
      ...shown.map((r) => {
        const c = r.counts ?? {}
        const box = h("input", { type: "checkbox", checked: selected.has(r.id), onchange: (e) => (e.target.checked ? selected.add(r.id) : selected.delete(r.id), syncCompare()) })
        return h(
          "tr",
          { "data-run": r.id },
          h("td", {}, box),
          h("td", {}, runLink(r.id)),
          h("td", {}, badge(r.status)),
          h("td", { title: r.file }, r.pipeline),
          h("td", {}, time(r.startedAt)),
          h("td", { class: "num" }, seconds(((r.endedAt ?? Date.now()) - r.startedAt) / 1000)),
          h("td", { class: "num" }, c.succeeded ?? 0),
          h("td", { class: "num" }, c.cached ?? 0),
          h("td", { class: "num" }, c.failed ?? 0),
        )
      }),
    )
  }
  filter.addEventListener("input", render)
  status.addEventListener("change", render)
  show(h("h1", {}, "Runs"), h("div", { class: "filters" }, filter, status, compare), list)
  await poll(async () => {
    runs = await api("/api/runs")
    render()
    return runs.some((r) => r.status === "running")
  })
}

// ------------------------------------------------------------------------------ run page: the DAG

const BOX = { w: 190, h: 34, gapX: 70, gapY: 10, pad: 18 }

/** Columns by depth (longest path from a source), instances of one call kept together in a group box. */
const layout = (nodes) => {
  const byName = new Map(nodes.map((n) => [n.name, n]))
  const depth = new Map()
  const depthOf = (n) => {
    if (!depth.has(n.name)) depth.set(n.name, n.deps.length === 0 ? 0 : 1 + Math.max(...n.deps.map((d) => depthOf(byName.get(d)))))
    return depth.get(n.name)
  }
  nodes.forEach(depthOf)
  const columns = []
  for (const n of nodes) (columns[depth.get(n.name)] ??= []).push(n)
  const pos = new Map()
  const groups = []
  let height = 0
  columns.forEach((col, c) => {
    const x = BOX.pad + c * (BOX.w + BOX.gapX)
    let y = BOX.pad
    const labels = [...new Set(col.map((n) => n.label))]
    for (const label of labels) {
      const members = col.filter((n) => n.label === label)
      const grouped = members.length > 1
      if (grouped) y += 16
      const top = y
      for (const n of members) {
        pos.set(n.name, { x, y })
        y += BOX.h + BOX.gapY
      }
      if (grouped) groups.push({ label, x: x - 6, y: top - 18, w: BOX.w + 12, h: y - top + 14, n: members.length })
      y += grouped ? 14 : 0
    }
    height = Math.max(height, y)
  })
  return { pos, groups, width: BOX.pad * 2 + columns.length * (BOX.w + BOX.gapX) - BOX.gapX, height: height + BOX.pad }
}

const progressText = (p) => (p ? ` ${p.value}/${p.total} ${p.unit}`.trimEnd() : "")
const nodeTitle = (n) => `${n.name}\n${n.state}${n.seconds !== null ? `, ${seconds(n.seconds)}` : ""}${progressText(n.progress)}${n.error ? `\n${n.error}` : ""}`

const dagView = (run) => {
  const { pos, groups, width, height } = layout(run.nodes)
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "dag" })
  for (const g of groups)
    svg.append(s("g", { class: "dag-group", "data-group": g.label }, s("rect", { x: g.x, y: g.y, width: g.w, height: g.h, rx: 6 }), s("text", { x: g.x + 6, y: g.y + 12 }, `${g.label} ×${g.n}`)))
  for (const n of run.nodes)
    for (const d of n.deps) {
      const [a, b] = [pos.get(d), pos.get(n.name)]
      const [x1, y1, x2, y2] = [a.x + BOX.w, a.y + BOX.h / 2, b.x, b.y + BOX.h / 2]
      svg.append(s("path", { class: "dag-edge", d: `M${x1},${y1} C${x1 + BOX.gapX / 2},${y1} ${x2 - BOX.gapX / 2},${y2} ${x2},${y2}` }))
    }
  const elements = new Map()
  for (const n of run.nodes) {
    const p = pos.get(n.name)
    // an instance shows its sweep coordinates; its call's name is on the group box
    const text = n.name === n.label || !groups.some((g) => g.label === n.label) ? n.name : n.name.slice(n.label.length)
    const label = s("text", { x: p.x + 8, y: p.y + 14 }, text.length > 30 ? `${text.slice(0, 29)}…` : text)
    const detail = s("text", { x: p.x + 8, y: p.y + 27, class: "detail" })
    const title = s("title")
    const g = s("g", { class: `dag-node state-${n.state}`, "data-node": n.name, "data-state": n.state }, s("rect", { x: p.x, y: p.y, width: BOX.w, height: BOX.h, rx: 4 }), label, detail, title)
    g.addEventListener("click", () => (location.href = nodeHref(run.id, n.name)))
    svg.append(g)
    elements.set(n.name, { g, detail, title })
  }
  const update = (r) => {
    for (const n of r.nodes) {
      const e = elements.get(n.name)
      if (e === undefined) continue
      e.g.setAttribute("class", `dag-node state-${n.state}`)
      e.g.setAttribute("data-state", n.state)
      e.detail.textContent = `${n.state}${n.seconds !== null ? ` ${seconds(n.seconds)}` : ""}${progressText(n.progress)}`
      e.title.textContent = nodeTitle(n)
    }
  }
  update(run)
  return { svg, update }
}

const STATES = ["pending", "running", "succeeded", "cached", "failed", "skipped", "interrupted"]
const legend = () => h("div", { class: "legend" }, STATES.map((st) => h("span", { style: `--c: var(--${st})` }, st)))

const fileView = (run, f) => {
  const box = h("div", { class: "file", "data-file": f.path ?? f.file }, h("h3", {}, f.path ?? f.file, " ", h("span", { class: "muted" }, `from ${f.node}`)))
  if (f.error) return box.append(h("p", { class: "error" }, f.error)), box
  const url = fileUrl(run, f.path)
  box.querySelector("h3").append(" ", h("a", { href: url }, "raw"))
  if (f.kind === "svg") box.append(h("img", { src: url, alt: f.path }))
  else if (f.kind === "html") box.append(h("iframe", { src: url, sandbox: "", title: f.path }))
  else if (f.kind === "dir") box.append(h("ul", {}, f.entries.map((e) => h("li", {}, h("a", { href: fileUrl(run, `${f.path}/${e}`) }, e)))))
  else if (f.kind === "binary") box.append(h("p", { class: "muted" }, "binary file: use the raw link"))
  else
    api(fileUrl(run, f.path, "view"))
      .then((v) => {
        if (v.kind === "markdown") {
          // rendered by the server from the run's own file, raw HTML in it escaped
          const div = h("div", { class: "markdown" })
          div.innerHTML = v.html
          box.append(div)
        } else if (v.kind === "json") box.append(jsonTable(v.value))
        else if (v.kind === "csv") box.append(csvTable(v.text))
        else box.append(h("pre", {}, v.text))
      })
      .catch((e) => box.append(h("p", { class: "error" }, e.message)))
  return box
}

/** For each call swept into several instances: two pickers of its instances and a link comparing them. */
const pointPickers = (run) => {
  const calls = new Map()
  for (const n of run.nodes) calls.set(n.label, [...(calls.get(n.label) ?? []), n.name])
  const swept = [...calls].filter(([, names]) => names.length > 1)
  if (swept.length === 0) return null
  const rows = swept.map(([label, names]) => {
    const pick = (i) => h("select", { "data-side": i === 0 ? "a" : "b" }, names.map((n, j) => h("option", { value: n, selected: j === i }, n.slice(label.length) || n)))
    const [a, b] = [pick(0), pick(1)]
    const link = h("a", { class: "compare-points" }, "compare")
    const sync = () => link.setAttribute("href", `/compare?a=${encodeURIComponent(`${run.id}/${a.value}`)}&b=${encodeURIComponent(`${run.id}/${b.value}`)}`)
    a.addEventListener("change", sync)
    b.addEventListener("change", sync)
    sync()
    return h("div", { class: "filters", "data-call": label }, h("code", {}, label), a, "vs", b, link)
  })
  return h("section", { id: "compare-points" }, h("h2", {}, "Compare sweep points"), ...rows)
}

const runView = async (id) => {
  let run = await api(`/api/runs/${encodeURIComponent(id)}`)
  const dag = dagView(run)
  const head = h("p", { id: "run-status" })
  const files = h("section", { id: "files" })
  const setHead = (r) =>
    head.replaceChildren(badge(r.status), ` ${r.pipeline} · started ${time(r.startedAt)} · ${seconds(((r.endedAt ?? Date.now()) - r.startedAt) / 1000)} · `, h("code", {}, r.args.join(" ")))
  // plots and prose first, raw data after
  const order = ["svg", "markdown", "html", "csv", "json", "text", "dir", "binary"]
  const rank = (f) => (f.error ? order.length : order.indexOf(f.kind))
  const setFiles = (r) =>
    files.replaceChildren(
      h("h2", {}, "Published results"),
      ...(r.files.length === 0 ? [h("p", { class: "muted" }, r.status === "running" ? "written when the run ends" : "none")] : [...r.files].sort((a, b) => rank(a) - rank(b)).map((f) => fileView(r.id, f))),
    )
  setHead(run)
  setFiles(run)
  show(h("h1", {}, `Run ${run.id}`), head, h("h2", {}, "Graph"), legend(), h("div", { class: "dag" }, dag.svg), pointPickers(run), files)
  if (run.status !== "running") return
  await poll(async () => {
    const was = run.status
    run = await api(`/api/runs/${encodeURIComponent(id)}`)
    dag.update(run)
    setHead(run)
    if (was === "running" && run.status !== "running") setFiles(run)
    return run.status === "running"
  })
}

// ------------------------------------------------------------------------------ node page

const nodeView = async (id, name) => {
  const url = `/api/runs/${encodeURIComponent(id)}/node?name=${encodeURIComponent(name)}`
  let n = await api(url)
  const status = h("p", { id: "node-status" })
  const log = h("pre", { id: "log" })
  const charts = h("div", { class: "charts", id: "charts" })
  const metrics = h("div", { id: "metrics" })
  const setStatus = (n) => {
    const e = n.execution
    status.replaceChildren(badge(n.state), ` stage ${n.stage} · run `, runLink(id), e ? ` · executed in run ${e.run} on ${e.device}, started ${time(e.startedAt)}, ${seconds(((e.endedAt ?? Date.now()) - e.startedAt) / 1000)}` : "")
    if (e?.error) status.append(h("pre", { class: "error" }, e.error))
  }
  const setCharts = (n) => {
    charts.replaceChildren(...(n.charts.length === 0 ? [h("p", { class: "muted" }, "no metric recorded at several steps")] : n.charts.map((c) => chartBox(c.vega))))
    const last = Object.entries(n.lastMetrics)
    metrics.replaceChildren(last.length === 0 ? h("p", { class: "muted" }, "none") : table(["metric", "last value", "step"], last.map(([k, m]) => h("tr", {}, h("td", {}, k), h("td", { class: "num" }, m.value), h("td", { class: "num" }, m.step ?? "")))))
  }
  const keyParts = n.keyParts
    ? table(["part", "value"], [
        h("tr", {}, h("td", {}, "version"), h("td", {}, n.keyParts.version)),
        ...Object.entries(n.keyParts.inputs).map(([k, v]) => h("tr", {}, h("td", {}, `input ${k}`), h("td", {}, h("code", {}, v)))),
      ])
    : h("p", { class: "muted" }, "not computed yet")
  const why = n.why
    ? h("div", {}, h("p", {}, `previous key ${n.why.previousKey.slice(0, 12)} (run `, runLink(n.why.previousRun), "); changed:"), h("ul", {}, n.why.changes.map((c) => h("li", {}, h("code", {}, c)))))
    : h("p", { class: "muted" }, "no earlier execution with a different key")
  setStatus(n)
  setCharts(n)
  show(
    h("h1", {}, name),
    status,
    h("h2", {}, "Params"),
    jsonTable(n.params),
    h("h2", {}, "Key"),
    h("p", {}, h("code", { id: "key" }, n.key ?? "-")),
    keyParts,
    h("h3", {}, "What changed since the previous key (pipe why)"),
    why,
    h("h2", {}, "Metrics"),
    charts,
    metrics,
    h("h2", {}, "Log"),
    log,
  )
  let offset = 0
  const tail = async () => {
    const l = await api(`/api/runs/${encodeURIComponent(id)}/log?node=${encodeURIComponent(name)}&from=${offset}`)
    if (l.size < offset) log.textContent = ""
    log.append(l.text)
    offset = l.size
    if (l.path === null && offset === 0) log.textContent = "(no log: the node has not run)"
  }
  await tail()
  if (n.state !== "running" && n.state !== "pending") return
  await poll(async () => {
    const was = n.state
    n = await api(url)
    await tail()
    setStatus(n)
    if (n.state === "running" || n.state !== was) setCharts(n)
    return n.state === "running" || n.state === "pending"
  })
}

// ------------------------------------------------------------------------------ compare

const compareView = async (a, b) => {
  const c = await api(`/api/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`)
  const sections = c.nodes
    .filter((n) => !n.inA || !n.inB || n.params.some((p) => p.differs) || n.curve !== null)
    .map((n) =>
      h(
        "section",
        { "data-compare": n.name },
        h("h2", {}, n.name, !n.inA ? " (only in B)" : !n.inB ? " (only in A)" : ""),
        table(["param", "A", "B"], n.params.filter((p) => p.differs).map((p) => h("tr", { class: "differs" }, h("td", {}, p.param), h("td", {}, h("code", {}, p.a ?? "-")), h("td", {}, h("code", {}, p.b ?? "-"))))),
        n.curve === null ? null : chartBox(n.curve),
      ),
    )
  show(
    h("h1", {}, "Compare"),
    table(["", "", "pipeline", "status"], [["A", c.a], ["B", c.b]].map(([k, x]) => h("tr", {}, h("th", {}, k), h("td", {}, x.ref), h("td", {}, x.pipeline), h("td", {}, badge(x.status))))),
    ...(sections.length === 0 ? [h("p", { class: "muted" }, "no node differs in params, and none has a training curve")] : sections),
  )
}

// ------------------------------------------------------------------------------ routing

const route = () => {
  const path = location.pathname
  const q = new URLSearchParams(location.search)
  const m = path.match(/^\/(run|node)\/([^/]+)$/)
  if (m?.[1] === "run") return runView(decodeURIComponent(m[2]))
  if (m?.[1] === "node") return nodeView(decodeURIComponent(m[2]), q.get("name") ?? "")
  if (path === "/compare") return compareView(q.get("a") ?? "", q.get("b") ?? "")
  return runsView()
}

route().catch((e) => show(h("h1", {}, "Error"), h("p", { class: "error", id: "error" }, e.message)))
