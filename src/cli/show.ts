// `pipe show <run|node>`: a run's nodes, or a node's latest execution with its last metrics.
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
    return 0
  },
}
