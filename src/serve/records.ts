// What the dashboard shows, read from the run records: the runs table and executions in the cache
// database, and each run's folder (plan.json, summary.json, logs, published files). Nothing here
// writes; every path that comes from a request is resolved inside the runs directory or refused.
import * as Data from "effect/Data"
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from "node:fs"
import { basename, join, relative, resolve, sep } from "node:path"
import { componentsOf, diffComponents } from "../engine/explain.ts"
import { canonicalJson } from "../engine/hash.ts"
import { type ExecutionRow, openStoreForReading, type RunRow, type Store } from "../engine/store.ts"
import { curveMetricNames, hasTrainingCurve, lineChart, type MetricPoint, type Series, stepSeries, trainingCurve } from "../plots/charts.ts"
import type { ChartSpec } from "../plots/render.ts"
import type { NodeProgress } from "../engine/progress.ts"

/** A node's state on the run page: the scheduler's outcome once the run is over, else what the records say so far. */
export type NodeState = "cached" | "running" | "succeeded" | "failed" | "skipped" | "interrupted" | "pending"

/** A request for something that does not exist: the server answers 404 with the message. */
export class NotFound extends Data.TaggedError("NotFound")<{ readonly message: string }> {}
/** A path that leads out of the runs directory: the server answers 403 with the message. */
export class Forbidden extends Data.TaggedError("Forbidden")<{ readonly message: string }> {}

interface PlanFile {
  readonly pipeline: string
  readonly nodes: ReadonlyArray<{
    readonly name: string
    readonly stage: string
    readonly label: string
    readonly params: Readonly<Record<string, unknown>>
    readonly coords?: Readonly<Record<string, unknown>>
    readonly inputs: Readonly<Record<string, string | ReadonlyArray<string>>>
  }>
}

interface NodeRecord {
  readonly state: NodeState
  readonly key?: string
  readonly error?: string
  readonly execution?: ExecutionRow
  readonly progress?: { readonly value: number; readonly total: number; readonly unit: string }
}

interface SummaryFile {
  readonly nodes: ReadonlyArray<{ readonly name: string; readonly status: NodeState; readonly key?: string; readonly error?: string }>
  readonly published?: ReadonlyArray<{ readonly file: string; readonly node: string; readonly path?: string; readonly error?: string }>
}

// Run ids are made by newRunId (digits, a dash, hex); anything else never names a folder here.
const RUN_ID = /^[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$/

const readJsonFile = <T>(path: string): T | undefined => {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T
  } catch {
    return undefined // absent while the run works (summary.json), or a run folder that was deleted
  }
}

/**
 * `rel` resolved inside `root`, following symlinks, or Forbidden: `..`, absolute paths, encoded
 * separators and links out of the folder all end up outside it and are refused.
 */
export const insideFolder = (root: string, rel: string): string => {
  const base = realpathSync(root)
  const target = resolve(base, rel)
  if (target !== base && !target.startsWith(base + sep)) throw new Forbidden({ message: `${rel}: outside the run's folder` })
  if (!existsSync(target)) throw new NotFound({ message: `${rel}: no such file in the run's folder` })
  const real = realpathSync(target)
  if (real !== base && !real.startsWith(base + sep)) throw new Forbidden({ message: `${rel}: a link out of the run's folder` })
  return real
}

/** The dashboard's view of one cache directory and one runs directory. */
export class Records {
  constructor(
    private readonly store: () => Store,
    readonly runsDir: string,
  ) {
    this.runsDir = resolve(runsDir)
  }

  private runRow(id: string): RunRow {
    if (!RUN_ID.test(id)) throw new NotFound({ message: `no run ${JSON.stringify(id)}` })
    const run = this.store().run(id)
    if (run === undefined) throw new NotFound({ message: `no run ${id} in the cache database` })
    return run
  }

  private runDir(id: string): string {
    return join(this.runsDir, id)
  }

  private plan(id: string): PlanFile {
    const plan = readJsonFile<PlanFile>(join(this.runDir(id), "plan.json"))
    if (plan === undefined) throw new NotFound({ message: `run ${id} has no readable ${join(this.runDir(id), "plan.json")}` })
    return plan
  }

  /**
   * Node states of a run: the final outcomes from summary.json once the run is over; while it works,
   * progress.json (cached, running with its progress, done) and its executions so far; other nodes
   * are pending.
   */
  private states(run: RunRow): Map<string, NodeRecord> {
    const dir = this.runDir(run.id)
    const summary = readJsonFile<SummaryFile>(join(dir, "summary.json"))
    const progress = summary === undefined ? readJsonFile<Readonly<Record<string, NodeProgress>>>(join(dir, "progress.json")) : undefined
    const states = new Map<string, NodeRecord>()
    for (const [name, p] of Object.entries(progress ?? {}))
      states.set(name, { state: p.state === "waiting" ? "pending" : p.state, ...(p.total !== undefined && p.value !== undefined ? { progress: { value: p.value, total: p.total, unit: p.unit ?? "" } } : {}) })
    for (const n of summary?.nodes ?? []) states.set(n.name, { state: n.status, ...(n.key ? { key: n.key } : {}), ...(n.error ? { error: n.error } : {}) })
    for (const e of this.store().executionsOfRun(run.id)) {
      const known = states.get(e.node)
      // the database is written before progress.json: a node it has finished is finished
      const state = summary !== undefined ? (known?.state ?? (e.status as NodeState)) : e.status === "running" ? (known?.state ?? "running") : (e.status as NodeState)
      states.set(e.node, { ...known, state, key: e.key, ...(e.error ? { error: e.error } : {}), execution: e })
    }
    return states
  }

  private counts(run: RunRow): Record<string, number> | undefined {
    return run.summary ? (JSON.parse(run.summary) as { counts?: Record<string, number> }).counts : undefined
  }

  runs(limit: number) {
    return this.store()
      .runs(limit)
      .map((r) => ({
        id: r.id,
        pipeline: basename(r.pipeline).replace(/\.ts$/, ""),
        file: r.pipeline,
        status: r.status,
        startedAt: r.started_at,
        endedAt: r.ended_at,
        counts: this.counts(r) ?? this.liveCounts(r),
      }))
  }

  private liveCounts(run: RunRow): Record<string, number> {
    const counts: Record<string, number> = {}
    for (const e of this.store().executionsOfRun(run.id)) counts[e.status] = (counts[e.status] ?? 0) + 1
    return counts
  }

  run(id: string) {
    const run = this.runRow(id)
    const plan = this.plan(id)
    const states = this.states(run)
    const now = Date.now()
    const nodes = plan.nodes.map((n) => {
      const s = states.get(n.name)
      const e = s?.execution
      return {
        name: n.name,
        label: n.label,
        stage: n.stage,
        coords: n.coords ?? {},
        // inputs from other nodes (the DAG's edges); external inputs are paths, shown on the node page
        deps: Object.values(n.inputs).flatMap((v) => (typeof v === "string" ? [v] : v)).filter((v) => plan.nodes.some((m) => m.name === v)),
        state: s?.state ?? (run.status === "running" ? "pending" : "skipped"),
        error: s?.error?.split("\n")[0] ?? null,
        seconds: e === undefined ? null : ((e.ended_at ?? now) - e.started_at) / 1000,
        progress: s?.state === "running" ? (s.progress ?? null) : null,
      }
    })
    return {
      id: run.id,
      pipeline: basename(run.pipeline).replace(/\.ts$/, ""),
      file: run.pipeline,
      args: JSON.parse(run.args) as ReadonlyArray<string>,
      status: run.status,
      startedAt: run.started_at,
      endedAt: run.ended_at,
      nodes,
      files: this.files(id),
    }
  }

  /** The files the run published (from summary.json once it is written) and its training curves, by kind for the page. */
  private files(id: string): ReadonlyArray<PublishedEntry> {
    const summary = readJsonFile<SummaryFile>(join(this.runDir(id), "summary.json"))
    const base = this.runDir(id)
    const curves = join(base, "curves")
    const curveFiles = existsSync(curves)
      ? readdirSync(curves).sort().map((f): PublishedEntry => ({ file: f, node: f.replace(/\.svg$/, ""), path: `curves/${f}`, kind: "svg" }))
      : []
    return [...(summary?.published ?? []).map((p): PublishedEntry => {
      if (p.path === undefined) return { file: p.file, node: p.node, error: p.error ?? "not written" }
      const rel = relative(base, p.path)
      const dir = existsSync(p.path) && statSync(p.path).isDirectory()
      return { file: p.file, node: p.node, path: rel, kind: dir ? "dir" : kindOf(rel), ...(dir ? { entries: readdirSync(p.path).sort() } : {}) }
    }), ...curveFiles]
  }

  /** The execution that made a node's value in a run: its own execution there, else the cached entry's producer. */
  private producer(run: RunRow, node: string): { execution: ExecutionRow | undefined; state: NodeState; key?: string } {
    const s = this.states(run).get(node)
    if (!this.plan(run.id).nodes.some((n) => n.name === node)) throw new NotFound({ message: `run ${run.id} has no node ${JSON.stringify(node)}` })
    if (s === undefined) return { execution: undefined, state: run.status === "running" ? "pending" : "skipped" }
    const execution = s.execution ?? (s.key === undefined ? undefined : this.store().cachedExecution(s.key))
    return { execution, state: s.state, ...(s.key ? { key: s.key } : {}) }
  }

  private metrics(e: ExecutionRow | undefined): ReadonlyArray<MetricPoint> {
    return e === undefined ? [] : this.store().metricsOf(e.id)
  }

  node(id: string, name: string) {
    const run = this.runRow(id)
    const planned = this.plan(id).nodes.find((n) => n.name === name)
    const { execution: e, state, key } = this.producer(run, name)
    const metrics = this.metrics(e)
    const previous = e === undefined ? undefined : this.store().executionsOf(name).find((r) => r.id < e.id && r.key !== e.key)
    return {
      run: id,
      name,
      stage: planned?.stage ?? e?.stage,
      state,
      key: key ?? e?.key ?? null,
      params: planned?.params ?? {},
      inputs: planned?.inputs ?? {},
      execution:
        e === undefined ? null : { run: e.run_id, status: e.status, startedAt: e.started_at, endedAt: e.ended_at, device: e.device, error: e.error, version: e.version },
      keyParts: e === undefined ? null : componentsOf(e),
      // what `pipe why` says: the changes since the node's previous execution with another key
      why: e === undefined || previous === undefined ? null : { previousKey: previous.key, previousRun: previous.run_id, changes: diffComponents(componentsOf(previous), componentsOf(e)) },
      lastMetrics: lastValues(metrics),
      charts: charts(name, metrics),
    }
  }

  /** The node's log from byte `from` on (the page tails it), with the size to ask from next. */
  log(id: string, name: string, from: number): { text: string; size: number; path: string | null } {
    const run = this.runRow(id)
    const { execution: e } = this.producer(run, name)
    if (e === undefined) return { text: "", size: 0, path: null }
    // the log path comes from the database: read only where logs live, in the runs directory
    const path = insideFolder(this.runsDir, relative(this.runsDir, e.log_path))
    const all = readFileSync(path)
    const start = Math.min(Math.max(0, from), all.length)
    return { text: all.subarray(start).toString("utf8"), size: all.length, path: relative(this.runsDir, path) }
  }

  /** A published file (or anything else in the run's folder) by its path relative to the folder. */
  file(id: string, rel: string): { path: string; kind: FileKind } {
    this.runRow(id)
    const path = insideFolder(this.runDir(id), rel)
    if (!statSync(path).isFile()) throw new NotFound({ message: `${rel}: not a file` })
    return { path, kind: kindOf(path) }
  }

  /**
   * Two runs, or two nodes (`run/node`, e.g. two points of a sweep), side by side: for every node name
   * in either, the params that differ, and the training curves of both overlaid.
   */
  compare(a: string, b: string) {
    const side = (ref: string) => {
      const slash = ref.indexOf("/")
      const id = slash < 0 ? ref : ref.slice(0, slash)
      const run = this.runRow(id)
      const nodes = this.plan(id).nodes.filter((n) => slash < 0 || n.name === ref.slice(slash + 1))
      if (nodes.length === 0) throw new NotFound({ message: `run ${id} has no node ${JSON.stringify(ref.slice(slash + 1))}` })
      return { ref, run, nodes, single: slash >= 0 }
    }
    const [l, r] = [side(a), side(b)]
    // two single nodes are compared with each other whatever their names; two runs node by node
    const pairs: Array<[string, (typeof l.nodes)[number] | undefined, (typeof r.nodes)[number] | undefined]> =
      l.single && r.single ? [[`${l.nodes[0].name} vs ${r.nodes[0].name}`, l.nodes[0], r.nodes[0]]]
      : [...new Set([...l.nodes, ...r.nodes].map((n) => n.name))].map((name) => [name, l.nodes.find((n) => n.name === name), r.nodes.find((n) => n.name === name)])
    return {
      a: { ref: l.ref, pipeline: basename(l.run.pipeline), status: l.run.status },
      b: { ref: r.ref, pipeline: basename(r.run.pipeline), status: r.run.status },
      nodes: pairs.map(([name, x, y]) => {
        const params = paramsDiff(x?.params, y?.params)
        const mx = x === undefined ? [] : this.metrics(this.producer(l.run, x.name).execution)
        const my = y === undefined ? [] : this.metrics(this.producer(r.run, y.name).execution)
        const curve = hasTrainingCurve(mx) || hasTrainingCurve(my) ? overlaid(name, mx, my) : null
        return { name, inA: x !== undefined, inB: y !== undefined, params, curve }
      }),
    }
  }
}

type PublishedEntry =
  | { readonly file: string; readonly node: string; readonly error: string }
  | { readonly file: string; readonly node: string; readonly path: string; readonly kind: FileKind | "dir"; readonly entries?: ReadonlyArray<string> }

export type FileKind = "markdown" | "json" | "svg" | "html" | "csv" | "text" | "binary"

const KINDS: ReadonlyArray<readonly [RegExp, FileKind]> = [
  [/\.md$/i, "markdown"],
  [/\.jsonl?$/i, "json"],
  [/\.svg$/i, "svg"],
  [/\.html?$/i, "html"],
  [/\.csv$/i, "csv"],
  [/\.(txt|log)$/i, "text"],
]
export const kindOf = (path: string): FileKind => KINDS.find(([re]) => re.test(path))?.[1] ?? "binary"

const lastValues = (metrics: ReadonlyArray<MetricPoint>) => {
  const last = new Map<string, { step: number | null; value: number | string }>()
  // JSON has no NaN or Infinity: non-finite values travel as their names, as in metrics.jsonl
  for (const m of metrics) last.set(m.name, { step: m.step, value: Number.isFinite(m.value) ? m.value : String(m.value) })
  return Object.fromEntries(last)
}

/**
 * The node's interactive charts: its training curve when it has one, then every other metric it
 * recorded at several steps, one chart each (lr, grad_norm, tokens_per_s, ...).
 */
const charts = (node: string, metrics: ReadonlyArray<MetricPoint>): ReadonlyArray<{ name: string; spec: ChartSpec }> => {
  const curve = hasTrainingCurve(metrics) ? curveMetricNames(metrics) : []
  const others = [...new Set(metrics.filter((m) => m.step !== null).map((m) => m.name))].filter((n) => !curve.includes(n))
  return [
    ...(curve.length > 0 ? [{ name: "training curve", spec: trainingCurve(node, metrics) }] : []),
    ...others.flatMap((name) => {
      const series = stepSeries(metrics, [name])
      return series[0].points.length < 2 ? [] : [{ name, spec: lineChart(series, { title: `${node}: ${name}`, x: "step", y: name }) }]
    }),
  ]
}

const overlaid = (name: string, a: ReadonlyArray<MetricPoint>, b: ReadonlyArray<MetricPoint>): ChartSpec => {
  const names = [...new Set([...curveMetricNames(a), ...curveMetricNames(b)])]
  const tag = (side: string, series: ReadonlyArray<Series>) => series.map((s) => ({ ...s, name: `${side}: ${s.name}` }))
  return lineChart([...tag("A", stepSeries(a, names)), ...tag("B", stepSeries(b, names))], { title: `${name}: A vs B`, x: "step", y: "loss / validation metric" })
}

const paramsDiff = (a: Readonly<Record<string, unknown>> | undefined, b: Readonly<Record<string, unknown>> | undefined) => {
  const keys = [...new Set([...Object.keys(a ?? {}), ...Object.keys(b ?? {})])].sort()
  return keys.map((k) => {
    const [x, y] = [a !== undefined && k in a ? canonicalJson(a[k]) : null, b !== undefined && k in b ? canonicalJson(b[k]) : null]
    return { param: k, a: x, b: y, differs: x !== y }
  })
}

/**
 * The cache database as the dashboard reads it, fresh on every call: a writable cache is opened once
 * (SQLite shows each query what running `pipe run`s committed); one this user cannot write is read
 * from a snapshot (openStoreForReading), taken again whenever the database or its WAL changed.
 */
export const liveStore = (cacheDir: string): (() => Store) => {
  const db = join(resolve(cacheDir), "cache.sqlite")
  const stamp = () => [db, `${db}-wal`].map((f) => (existsSync(f) ? `${statSync(f).mtimeMs}:${statSync(f).size}` : "-")).join(",")
  let store = openStoreForReading(cacheDir)
  let seen = stamp()
  return () => {
    if (!store.readOnly) return store
    const now = stamp()
    if (now !== seen) {
      store.close()
      store = openStoreForReading(cacheDir)
      seen = now
    }
    return store
  }
}
