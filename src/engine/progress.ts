// What a run shows while it works: cli-progress bars on a terminal (one per running node, each in
// its own unit, plus an overall bar), plain timestamped lines otherwise (CI, pipes, tests).
import cliProgress from "cli-progress"
import type { ProgressEvent } from "./execute.ts"

export interface Reporter {
  readonly start: (total: number) => void
  readonly cached: (node: string) => void
  readonly started: (node: string, where: string) => void
  readonly progress: (node: string, e: ProgressEvent) => void
  readonly finished: (node: string, status: "succeeded" | "failed" | "skipped" | "interrupted", detail: string) => void
  readonly waiting: (node: string, owner: string) => void
  readonly message: (text: string) => void
  readonly close: () => void
}

export const silentReporter: Reporter = {
  start: () => {},
  cached: () => {},
  started: () => {},
  progress: () => {},
  finished: () => {},
  waiting: () => {},
  message: () => {},
  close: () => {},
}

const stamp = () => new Date().toISOString().slice(11, 19)

/**
 * Nodes finished so far, each counted once: a node found cached, then recomputed because a consumer
 * found its payload corrupt, finishes twice but is one of the plan's nodes.
 */
const finishedCounter = () => {
  const done = new Set<string>()
  return (node: string): boolean => done.size < done.add(node).size
}

/** Plain lines; progress lines are throttled to every 10% of a node's total. */
export const lineReporter = (write: (line: string) => void = (l) => process.stdout.write(l + "\n")): Reporter => {
  const totals = new Map<string, { total?: number; unit?: string; value: number; shown: number }>()
  const first = finishedCounter()
  let done = 0
  let total = 0
  const line = (text: string) => write(`${stamp()} ${text}`)
  return {
    start: (n) => {
      total = n
    },
    cached: (node) => {
      if (first(node)) done++
      line(`cached   ${node} [${done}/${total}]`)
    },
    started: (node, where) => line(`start    ${node} (${where})`),
    progress: (node, e) => {
      const s = totals.get(node) ?? { value: 0, shown: 0 }
      if (e.total !== undefined) s.total = e.total
      if (e.unit !== undefined) s.unit = e.unit
      s.value = e.value
      totals.set(node, s)
      if (s.total && s.value >= s.shown + s.total / 10) {
        s.shown = s.value
        line(`progress ${node} ${s.value}/${s.total} ${s.unit ?? ""}`.trimEnd())
      }
    },
    finished: (node, status, detail) => {
      if (first(node)) done++
      line(`${status.padEnd(8)} ${node} ${detail} [${done}/${total}]`)
    },
    waiting: (node, owner) => line(`waiting  ${node}: computed by another run (${owner})`),
    message: (text) => line(text),
    close: () => {},
  }
}

/** Bars on a terminal: the overall bar counts finished nodes; each running node gets its own bar. */
export const barReporter = (): Reporter => {
  const multi = new cliProgress.MultiBar(
    { format: "{name} |{bar}| {value}/{total} {unit}", hideCursor: true, clearOnComplete: false, stopOnComplete: false, autopadding: true },
    cliProgress.Presets.shades_classic,
  )
  const overall = multi.create(1, 0, { name: "overall".padEnd(32), unit: "nodes" })
  const bars = new Map<string, cliProgress.SingleBar>()
  const first = finishedCounter()
  const short = (node: string) => (node.length > 32 ? node.slice(0, 31) + "…" : node.padEnd(32))
  return {
    start: (n) => overall.setTotal(n),
    cached: (node) => {
      if (first(node)) overall.increment()
    },
    started: (node) => bars.set(node, multi.create(1, 0, { name: short(node), unit: "" })),
    progress: (node, e) => {
      const bar = bars.get(node)
      if (!bar) return
      if (e.total !== undefined) bar.setTotal(e.total)
      bar.update(e.value, e.unit !== undefined ? { unit: e.unit } : {})
    },
    finished: (node, status, detail) => {
      const bar = bars.get(node)
      if (bar) {
        multi.remove(bar)
        bars.delete(node)
      }
      if (first(node)) overall.increment()
      multi.log(`${stamp()} ${status.padEnd(8)} ${node} ${detail}\n`)
    },
    waiting: (node, owner) => multi.log(`${stamp()} waiting  ${node}: computed by another run (${owner})\n`),
    message: (text) => multi.log(`${stamp()} ${text}\n`),
    close: () => multi.stop(),
  }
}

/** What runs/<id>/progress.json holds while a run works: each node's state so far and its progress. */
export interface NodeProgress {
  readonly state: "cached" | "running" | "waiting" | "succeeded" | "failed" | "skipped" | "interrupted"
  readonly value?: number
  readonly total?: number
  readonly unit?: string
}

/**
 * Passes every event to `inner` and keeps runs/<id>/progress.json up to date (node -> NodeProgress,
 * rewritten whole at most every `everyMs`, a change never left unwritten longer than that), so a
 * reader such as `pipe serve` sees which nodes are cached, running (and how far along) or done while
 * the run goes on. `flush` writes what is pending at once (the run's end). A file that cannot be
 * written is given up on: the run's own records (SQLite, summary.json) are what counts.
 */
export const recordingReporter = (
  inner: Reporter,
  file: string,
  write: (file: string, text: string) => void,
  everyMs = 500,
): { readonly reporter: Reporter; readonly flush: () => void } => {
  const nodes = new Map<string, NodeProgress>()
  let timer: ReturnType<typeof setTimeout> | undefined
  let failed = false
  const flush = () => {
    if (timer !== undefined) clearTimeout(timer)
    timer = undefined
    if (failed) return
    try {
      write(file, JSON.stringify(Object.fromEntries(nodes)))
    } catch {
      failed = true
    }
  }
  const set = (node: string, p: NodeProgress) => {
    nodes.set(node, p)
    // a thousand cached nodes found at once make one write, not a thousand
    if (timer === undefined) timer = setTimeout(flush, everyMs).unref()
  }
  const reporter: Reporter = {
    ...inner,
    cached: (node) => {
      inner.cached(node)
      set(node, { state: "cached" })
    },
    started: (node, where) => {
      inner.started(node, where)
      set(node, { state: "running" })
    },
    progress: (node, e) => {
      inner.progress(node, e)
      set(node, { ...(nodes.get(node) ?? { state: "running" }), value: e.value, ...(e.total !== undefined ? { total: e.total } : {}), ...(e.unit !== undefined ? { unit: e.unit } : {}) })
    },
    finished: (node, status, detail) => {
      inner.finished(node, status, detail)
      set(node, { ...nodes.get(node), state: status })
    },
    waiting: (node, owner) => {
      inner.waiting(node, owner)
      set(node, { state: "waiting" })
    },
  }
  return { reporter, flush }
}
