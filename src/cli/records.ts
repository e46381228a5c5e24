// The cache and records a command works on, and how the inspection commands print them.
import { errorMessage } from "../engine/errors.ts"
import type { JobState } from "../engine/slurm.ts"
import { openStoreForReading, Store, type ExecutionRow } from "../engine/store.ts"
import { one, UsageError, type Args } from "./args.ts"

export const cacheDir = (args: Args) => one(args, "--cache-dir") ?? process.env.PIPE_CACHE_DIR ?? "cache"
export const openStore = (args: Args) => new Store(cacheDir(args))
/** For the commands that only read: a cache this user cannot write is opened read-only. */
export const readStore = (args: Args) => openStoreForReading(cacheDir(args))
export const runsDir = (args: Args) => one(args, "--runs-dir") ?? process.env.PIPE_RUNS_DIR ?? "runs"

export const time = (ms: number | null) => (ms === null ? "-" : new Date(ms).toISOString().replace("T", " ").slice(0, 19))
export const duration = (e: ExecutionRow) => (e.ended_at === null ? "-" : `${((e.ended_at - e.started_at) / 1000).toFixed(1)}s`)

/** A node's executions, latest first (by display name or key prefix). */
export const latest = (store: Store, node: string): ReadonlyArray<ExecutionRow> => {
  const rows = store.executionsOf(node)
  if (rows.length === 0) throw new UsageError(`no execution of a node named "${node}" (use the name shown by pipe show <run>, or a key prefix)`)
  return rows
}

/**
 * "slurm job 123 RUNNING" for each execution run as a Slurm job, by execution id: the state is asked of
 * squeue for those still running (one call), and said to be unknown when slurmctld cannot be asked.
 */
export const slurmNotes = async (rows: ReadonlyArray<ExecutionRow>): Promise<Map<number, string>> => {
  const jobs = rows.filter((e) => e.slurm_job !== null)
  const running = jobs.filter((e) => e.status === "running").map((e) => e.slurm_job!)
  let states = new Map<string, JobState>()
  let unknown = "unknown to slurmctld"
  if (running.length > 0)
    try {
      // loaded here, not at the top: the executor pulls in all of effect, which `pipe ls` never needs
      const { slurmJobStates } = await import("../engine/slurm.ts")
      states = await slurmJobStates(running)
    } catch (e) {
      unknown = `state unknown: ${errorMessage(e)}`
    }
  const state = (e: ExecutionRow) => {
    if (e.status !== "running") return ""
    const s = states.get(e.slurm_job!)
    return s === undefined ? ` (${unknown})` : ` ${s.state}${s.reason !== "None" && s.reason !== "" ? ` (${s.reason})` : ""}`
  }
  return new Map(jobs.map((e) => [e.id, `slurm job ${e.slurm_job}${state(e)}`]))
}
