// `pipe table <run|pipeline> [node]`: a swept call's instances as one table from the records, a row
// per sweep point with its coordinates, the numbers in its JSON output and its recorded metrics
// (last value of each), or a sweep-table node's own table; with column selection and sorting.
//   <run>       the nodes of that run (runs/<id>/plan.json and summary.json)
//   <pipeline>  the pipeline as planned now (with --set), each instance's cached result if any
// Points without a result are listed with their status ("failed", "skipped", "not run").
import { Effect } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { explainPlan } from "../engine/explain.ts"
import type { Coordinates } from "../engine/gather.ts"
import { planFile } from "../engine/run.ts"
import type { StoredArtifact, Store } from "../engine/store.ts"
import { SweepTable, csv, markdown, numericLeaves, pick, selectColumns, sortRows, type Table } from "../engine/table.ts"
import type { Command } from "./args.ts"
import { openStore, runsDir } from "./records.ts"

interface TableOptions {
  readonly store: Store
  readonly runsDir: string
  /** a run id, or a pipeline file */
  readonly target: string
  /** the call (or sweep-table node) to show; default the last sweep table with a result, else the last swept call */
  readonly node?: string
  /** `--set` overrides when `target` is a pipeline file */
  readonly overrides: ReadonlyArray<string>
  /** columns to show, in order (coordinate names, metric names, or paths into the JSON output) */
  readonly columns: ReadonlyArray<string>
  /** columns to sort by, `-name` descending */
  readonly sort: ReadonlyArray<string>
  readonly format: "md" | "csv" | "json"
}

/** One planned node and what the records say about it. */
interface Instance {
  readonly name: string
  readonly label: string
  readonly coords: Coordinates
  readonly status: string
  readonly key?: string
  /** the result, where the node has one */
  readonly artifact?: StoredArtifact
}

const fromRun = (o: TableOptions): ReadonlyArray<Instance> => {
  const dir = join(o.runsDir, o.target)
  if (o.store.run(o.target) === undefined || !existsSync(join(dir, "plan.json")))
    throw new Error(`${o.target}: neither a pipeline file nor a run recorded in ${o.runsDir} (pipe ls lists runs)`)
  if (!existsSync(join(dir, "summary.json"))) throw new Error(`run ${o.target} has no summary.json: it is still running or was killed (use the pipeline file to see what is cached)`)
  const plan = JSON.parse(readFileSync(join(dir, "plan.json"), "utf8")) as { nodes: ReadonlyArray<{ name: string; label?: string; coords?: Coordinates }> }
  const summary = JSON.parse(readFileSync(join(dir, "summary.json"), "utf8")) as { nodes: ReadonlyArray<{ status: string; key?: string; output?: string }> }
  return plan.nodes.map((n, i) => {
    if (n.label === undefined || n.coords === undefined) throw new Error(`run ${o.target} was recorded before pipe table existed: its plan.json has no sweep coordinates`)
    const { status, key, output } = summary.nodes[i]
    const artifact = output !== undefined && key !== undefined ? o.store.lookup(key) : undefined
    return { name: n.name, label: n.label, coords: n.coords, status, ...(key === undefined ? {} : { key }), ...(artifact ? { artifact } : {}) }
  })
}

const fromPipeline = async (o: TableOptions): Promise<ReadonlyArray<Instance>> => {
  const plan = await Effect.runPromise(planFile(o.store, o.target, o.overrides))
  const latest = o.store.latestByNode()
  return explainPlan(o.store, plan).map((e, i) => {
    const n = plan.nodes[i]
    const hit = e.state === "cached" && e.key !== undefined ? o.store.lookup(e.key) : undefined
    const status = hit ? "cached" : latest.get(n.name)?.status === "failed" ? "failed" : "not run"
    return { name: n.name, label: n.label, coords: n.coords, status, ...(hit ? { key: e.key, artifact: hit } : {}) }
  })
}

const isSweepTable = (i: Instance) => i.artifact?.type === SweepTable.name

/** The instances to tabulate: those of the named call (or stage), or the default described in TableOptions. */
const chosen = (o: TableOptions, all: ReadonlyArray<Instance>): ReadonlyArray<Instance> => {
  const labels = [...new Set(all.map((i) => i.label))]
  if (o.node !== undefined) {
    const mine = all.filter((i) => i.label === o.node)
    if (mine.length === 0) throw new Error(`no call named "${o.node}" in ${o.target} (calls: ${labels.join(", ")})`)
    return mine
  }
  const tables = all.filter(isSweepTable)
  if (tables.length > 0) return all.filter((i) => i.label === tables.at(-1)!.label)
  const swept = labels.filter((l) => all.filter((i) => i.label === l).length > 1)
  if (swept.length === 0) throw new Error(`${o.target} has no swept call and no sweep table (calls: ${labels.join(", ")})`)
  return all.filter((i) => i.label === swept.at(-1))
}

/** A row per instance: coordinates, status where not every point has a result, numbers of the JSON output, final metrics. */
const instanceTable = (store: Store, instances: ReadonlyArray<Instance>, wanted: ReadonlyArray<string>): Table => {
  const coordNames = [...new Set(instances.flatMap((i) => Object.keys(i.coords)))]
  const missing = instances.some((i) => i.artifact === undefined)
  const values = instances.map((i) => {
    const producer = i.artifact && i.key !== undefined ? store.cachedExecution(i.key) : undefined
    const metrics = new Map((producer ? store.metricsOf(producer.id) : []).map((m) => [m.name, m.value]))
    return { json: i.artifact?.json == null ? undefined : (JSON.parse(i.artifact.json) as unknown), metrics }
  })
  const metricNames = [...new Set(values.flatMap((v) => [...v.metrics.keys()]))]
  const leafNames = [...new Set(values.flatMap((v) => numericLeaves(v.json).map(([path]) => path)))]
  const fixed = [...coordNames, ...(missing ? ["status"] : [])]
  // a name is a coordinate, the status, a metric, or else a path into the JSON output
  const columns = wanted.length > 0 ? wanted : [...fixed, ...leafNames.filter((l) => !metricNames.includes(l) && !fixed.includes(l)), ...metricNames]
  const cell = (i: Instance, v: (typeof values)[number], name: string): unknown =>
    coordNames.includes(name) ? i.coords[name]
    : name === "status" && missing ? (i.artifact === undefined ? i.status : "ok")
    : v.metrics.has(name) ? v.metrics.get(name)
    : v.json === undefined ? undefined
    : pick(v.json, name)
  const rows = instances.map((i, k) => Object.fromEntries(columns.map((c) => [c, cell(i, values[k], c)])))
  for (const c of columns)
    if (!metricNames.includes(c) && !fixed.includes(c) && rows.every((r) => r[c] === undefined))
      throw new Error(`column "${c}": not a coordinate, metric or value of ${instances[0].label} (coordinates: ${coordNames.join(", ") || "none"}; metrics: ${metricNames.join(", ") || "none"}; numbers: ${leafNames.slice(0, 12).join(", ") || "none"}${leafNames.length > 12 ? ", ..." : ""})`)
  return { columns: columns.map((name) => ({ name })), rows }
}

const render = (t: Table, format: TableOptions["format"], title?: string) =>
  format === "csv" ? csv(t) : format === "json" ? `${JSON.stringify({ columns: t.columns.map((c) => c.name), rows: t.rows }, null, 2)}\n` : markdown(t, title)

/**
 * `pipe table <run|pipeline> [node] [--columns a,b] [--sort -a,b] [--format md|csv|json] [--set ...]`:
 * writes the table (one per instance when the chosen node is a swept sweep-table call).
 */
export const tableCommand = async (
  args: { readonly positional: ReadonlyArray<string>; readonly options: ReadonlyMap<string, ReadonlyArray<string>> },
  store: Store,
  runsDir: string,
  write: (text: string) => void,
): Promise<number> => {
  const [target, node, ...extra] = args.positional
  if (target === undefined || extra.length > 0) throw new Error("pipe table expects a run id or a pipeline file, and optionally a node")
  const format = args.options.get("--format")?.at(-1) ?? "md"
  if (format !== "md" && format !== "csv" && format !== "json") throw new Error(`--format expects md, csv or json, got ${format}`)
  const list = (name: string) => (args.options.get(name) ?? []).flatMap((v) => v.split(",")).filter((v) => v !== "")
  const o: TableOptions = { store, runsDir, target, ...(node === undefined ? {} : { node }), overrides: args.options.get("--set") ?? [], columns: list("--columns"), sort: list("--sort"), format }
  const all = existsSync(o.target) && /\.[cm]?[jt]s$/.test(o.target) ? await fromPipeline(o) : fromRun(o)
  const instances = chosen(o, all)
  if (!instances.every(isSweepTable)) {
    write(render(sortRows(instanceTable(o.store, instances, o.columns), o.sort), o.format))
    return 0
  }
  for (const i of instances) {
    const stored = JSON.parse(i.artifact!.json!) as SweepTable
    if (instances.length > 1 && o.format === "md") write(`== ${i.name} ==\n`)
    write(render(sortRows(o.columns.length > 0 ? selectColumns(stored, o.columns) : stored, o.sort), o.format, o.format === "md" ? stored.title : undefined))
  }
  return 0
}

export const command: Command = {
  options: ["--set", "--columns", "--sort", "--format"],
  run: async (args, cli) => {
    await cli.loadTypeScript() // the target may be a pipeline file
    return tableCommand(args, openStore(args), runsDir(args), (text) => process.stdout.write(text))
  },
}
