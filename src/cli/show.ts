// `pipe show <run|node>`: a run's nodes, or a node's latest execution with its last metrics.
// A stage can give its node a terminal view: a JSON output with a top-level string field `display`
// (ANSI colours allowed) is printed after the record, colours stripped when stdout is not a
// terminal or NO_COLOR is set (FORCE_COLOR keeps them).
import { needOne, out, type Command } from "./args.ts"
import { duration, latest, readStore, slurmNotes, time } from "./records.ts"

export const command: Command = {
  run: async (args) => {
    const what = needOne(args, "a run id or a node")
    const store = readStore(args)
    const run = store.run(what)
    if (run) {
      out(`run ${run.id}  ${run.status}  ${time(run.started_at)} -> ${time(run.ended_at)}`)
      out(`pipeline ${run.pipeline}`)
      out(`args ${JSON.parse(run.args).join(" ")}`)
      if (run.summary) out(`summary ${run.summary}`)
      const executions = store.executionsOfRun(run.id)
      const jobs = await slurmNotes(executions)
      for (const e of executions) {
        const job = jobs.get(e.id)
        out(`  ${e.status.padEnd(11)} ${duration(e).padStart(8)}  ${e.node}${job === undefined ? "" : `  [${job}]`}${e.error ? `  ${e.error.split("\n")[0]}` : ""}`)
      }
      return 0
    }
    const e = latest(store, what)[0]
    out(`node     ${e.node}`)
    out(`stage    ${e.stage} v${e.version}`)
    out(`key      ${e.key}`)
    out(`status   ${e.status}  (run ${e.run_id}, ${time(e.started_at)}, ${duration(e)}, device ${e.device})`)
    out(`params   ${e.params}`)
    if (e.unkeyed_params !== "{}") out(`unkeyed  ${e.unkeyed_params}`)
    out(`inputs   ${e.inputs}`)
    out(`output   ${e.output ?? "-"}`)
    const job = (await slurmNotes([e])).get(e.id)
    if (job !== undefined) out(`slurm    ${job.slice("slurm ".length)}`)
    if (e.error) out(`error    ${e.error}`)
    out(`log      ${e.log_path}`)
    const last = new Map<string, { step: number | null; value: number }>()
    for (const m of store.metricsOf(e.id)) last.set(m.name, m)
    for (const [name, m] of last) out(`metric   ${name} = ${m.value}${m.step === null ? "" : ` (step ${m.step})`}${Number.isFinite(m.value) ? "" : "  (non-finite)"}`)
    const display = e.output === null ? undefined : displayOf(store.inlineJson(e.output))
    if (display !== undefined) out(`\n${colour() ? display : stripAnsi(display)}`)
    return 0
  },
}

/** The `display` field of a JSON output, if it has one. */
const displayOf = (json: string | undefined): string | undefined => {
  if (json === undefined) return undefined
  const value: unknown = JSON.parse(json)
  return typeof value === "object" && value !== null && "display" in value && typeof value.display === "string" ? value.display : undefined
}

const colour = () => process.env.FORCE_COLOR !== undefined || (process.env.NO_COLOR === undefined && process.stdout.isTTY === true)

// SGR sequences only: what a display may use
const stripAnsi = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, "")
