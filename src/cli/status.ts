// `pipe status <pipeline.ts>` (and `pipe run --dry-run`): every node, cached or to run, and why.
import { Effect } from "effect"
import { explainPlan } from "../engine/explain.ts"
import { planFile } from "../engine/run.ts"
import type { Store } from "../engine/store.ts"
import { needOne, out, type Command } from "./args.ts"
import { readStore, slurmNotes } from "./records.ts"

export const explain = async (store: Store, file: string, overrides: ReadonlyArray<string>, rerun: ReadonlyArray<string>, mode: "dry-run" | "status") => {
  const p = await Effect.runPromise(planFile(store, file, overrides))
  const rows = explainPlan(store, p, rerun)
  // Nodes another run is computing as Slurm jobs right now.
  const running = rows.flatMap((r) => {
    const e = r.state === "run" && r.key !== undefined ? store.executionsOf(r.key)[0] : undefined
    return e?.status === "running" && e.slurm_job !== null ? [e] : []
  })
  const jobs = await slurmNotes(running)
  const jobOf = new Map(running.map((e) => [e.key, jobs.get(e.id)!]))
  const width = Math.min(60, rows.reduce((m, r) => Math.max(m, r.name.length), 4))
  for (const e of p.externals) out(`external ${e.name === undefined ? "" : `${e.name.padEnd(width)}  `}${e.path}`)
  for (const r of rows) {
    const label = r.state === "run" ? (mode === "dry-run" ? "to run" : "stale") : r.state
    const job = r.key === undefined ? undefined : jobOf.get(r.key)
    const note = job !== undefined ? `  running as ${job}` : r.state === "cached" && !r.sourceChanged ? "" : `  ${r.reason}`
    out(`${label.padEnd(8)} ${r.name.padEnd(width)}${note}`.trimEnd())
  }
  const count = (s: string) => rows.filter((r) => r.state === s).length
  out(`${rows.length} nodes: ${count("cached")} cached, ${count("run")} to run, ${count("pending")} pending upstream, ${rows.filter((r) => r.sourceChanged).length} with changed source`)
  store.close()
  return 0
}

export const command: Command = {
  options: ["--set", "--rerun"],
  run: async (args, cli) => {
    const file = needOne(args, "a pipeline file")
    await cli.loadTypeScript()
    return explain(readStore(args), file, args.options.get("--set") ?? [], args.options.get("--rerun") ?? [], "status")
  },
}
