// Runs a PyTorch reference script of bench/reference/ on Debian's torch (/usr/bin/python3), once
// per BLAS setting: Debian's torch hands matmuls to OpenBLAS, whose own thread pool fights
// torch's OpenMP threads on small matrices, so it runs once with single-threaded BLAS (best for
// small matmuls, e.g. decode steps) and once with threaded BLAS and one OpenMP thread (best for
// big matmuls); on one thread once. Callers compare each workload with the faster setting. Without torch the
// comparison is skipped, with the reason.
//   runTorchReference   one run per setting, each printing its result as its last JSON line
//   startTorchWorkers   one live process per setting that answers requests line by line, so a
//                       bench can alternate its own runs with torch's under the same load
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { Effect } from "effect"
import type * as ort from "onnxruntime-node"
import { createSession, type GraphFile, releaseSession } from "../src/runtime/session.ts"
import { type TrainState, trainStep } from "../src/runtime/train.ts"
import { mkdirSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { createInterface } from "node:readline"

const blasSettings = (threads: number): Array<Record<string, string>> =>
  threads === 1
    ? [{ OPENBLAS_NUM_THREADS: "1", OMP_NUM_THREADS: "1" }]
    : [
        { OPENBLAS_NUM_THREADS: "1", OMP_NUM_THREADS: String(threads) },
        { OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: "1" },
      ]

const python = "/usr/bin/python3"
const scriptPath = (script: string) => join(import.meta.dirname, "reference", script)
const failure = (script: string, status: number | null, stderr: string) =>
  /No module named 'torch'/.test(stderr) ? "torch is not installed for /usr/bin/python3 (apt-get install -y python3-torch)" : `${script} exited with ${status}: ${stderr.trim().split("\n").at(-1)}`

export interface TorchRuns {
  /** the JSON line each run printed last, with the BLAS environment it ran under */
  readonly runs: Array<Record<string, unknown>>
  readonly skipped?: string
}

export const runTorchReference = (script: string, args: ReadonlyArray<string>, threads: number): TorchRuns => {
  const runs: Array<Record<string, unknown>> = []
  for (const env of blasSettings(threads)) {
    const py = spawnSync(python, [scriptPath(script), ...args], { encoding: "utf8", env: { ...process.env, ...env }, maxBuffer: 256 * 2 ** 20 })
    if (py.error) return { runs, skipped: `cannot run ${python}: ${py.error.message}` }
    if (py.status !== 0) return { runs, skipped: failure(script, py.status, py.stderr) }
    runs.push({ env, ...(JSON.parse(py.stdout.trim().split("\n").at(-1)!) as Record<string, unknown>) })
  }
  return { runs }
}

export interface TorchWorker {
  readonly env: Readonly<Record<string, string>>
  /** the first JSON line the script printed */
  readonly first: Record<string, unknown>
  /** sends one line, resolves with the JSON line the script answers */
  readonly request: (line: string) => Promise<Record<string, unknown>>
  readonly close: () => void
}

const startWorker = async (script: string, args: ReadonlyArray<string>, env: Record<string, string>): Promise<TorchWorker | string> => {
  const child: ChildProcess = spawn(python, [scriptPath(script), ...args], { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] })
  let stderr = ""
  let spawnError: Error | undefined
  child.stderr?.on("data", (d) => {
    stderr += String(d)
  })
  child.on("error", (e) => {
    spawnError = e
  })
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve))
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  const next = async (): Promise<Record<string, unknown>> => {
    const line = await lines.next()
    if (line.done) {
      const status = await exited
      throw new Error(spawnError ? `cannot run ${python}: ${spawnError.message}` : failure(script, status, stderr))
    }
    return JSON.parse(line.value) as Record<string, unknown>
  }
  try {
    const first = await next()
    return {
      env,
      first,
      request: (line) => {
        child.stdin?.write(`${line}\n`)
        return next()
      },
      close: () => child.stdin?.end(),
    }
  } catch (e) {
    return (e as Error).message
  }
}

/** One worker per BLAS setting, or the reason torch is skipped (the workers started are closed). */
export const startTorchWorkers = async (script: string, args: ReadonlyArray<string>, threads: number): Promise<{ workers: TorchWorker[]; skipped?: string }> => {
  const workers: TorchWorker[] = []
  for (const env of blasSettings(threads)) {
    const w = await startWorker(script, args, env)
    if (typeof w === "string") {
      for (const started of workers) started.close()
      return { workers: [], skipped: w }
    }
    workers.push(w)
  }
  return { workers }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const timing = (tokens: number, xs: number[]) => ({ best_seconds: Math.min(...xs), median_seconds: median(xs), tokens_per_s: tokens / Math.min(...xs), median_tokens_per_s: tokens / median(xs) })

/** alternateSteps' `ours` for a train-step graph: a session on the given threads stepping from `fresh()` on `feeds` at `lr`. */
export const ourTrainSteps =
  (file: GraphFile, fresh: () => TrainState, feeds: Readonly<Record<string, ort.Tensor>>, lr: number) =>
  async (threads: number) => {
    const session = await Effect.runPromise(createSession(file, { intraOpThreads: threads }))
    let s = fresh()
    return {
      step: async () => {
        s = (await Effect.runPromise(trainStep(session, s, feeds, lr))).state
      },
      release: () => Effect.runPromise(releaseSession(session)),
    }
  }

/** |a − b| relative to b: how far our figure is from PyTorch's. */
export const relDiff = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-30)

/** Losses and gradient norms of the check steps, ours or PyTorch's, step by step. */
export type StepFigures = { loss: number[]; grad_norm: number[] }

/** The largest relative differences of the check steps' losses and gradient norms. */
export const stepAgreement = (ours: StepFigures, torch: StepFigures) => ({
  lossRel: torch.loss.reduce((m, l, i) => Math.max(m, relDiff(ours.loss[i], l)), 0),
  normRel: torch.grad_norm.reduce((m, n, i) => Math.max(m, relDiff(ours.grad_norm[i], n)), 0),
})

/**
 * How far the two sides' trained values land apart after the last check step, over every trained
 * tensor: ‖ours − torch‖ / ‖torch − start‖ (relative to the size of the update itself, so a tiny
 * update is not hidden by large weights) and the largest absolute difference.
 */
export const updateDifference = (tensors: Iterable<{ readonly ours: ArrayLike<number>; readonly torch: ArrayLike<number>; readonly start: ArrayLike<number> }>) => {
  let diff2 = 0
  let update2 = 0
  let maxAbs = 0
  for (const { ours, torch, start } of tensors)
    for (let i = 0; i < torch.length; i++) {
      const d = ours[i] - torch[i]
      diff2 += d * d
      update2 += (torch[i] - start[i]) ** 2
      maxAbs = Math.max(maxAbs, Math.abs(d))
    }
  return { rel: Math.sqrt(diff2 / update2), maxAbs }
}

export interface AlternateOptions<C> {
  readonly threads: number
  /** tokens one training step trains (the tokens/s numerator of both sides) */
  readonly tokens: number
  readonly warmup: number
  readonly reps: number
  readonly script: string
  readonly args: ReadonlyArray<string>
  /** our side on `threads` threads: one training step, and the release of its session */
  readonly ours: (threads: number) => Promise<{ readonly step: () => Promise<void>; readonly release: () => Promise<void> }>
  /** compares a torch worker's first line (its check) with ours */
  readonly check: (first: Record<string, unknown>) => C
}

/**
 * Checks each torch worker (one per BLAS setting) with `check`, then times rounds of one step of
 * ours followed by one step of each torch worker, so that every side sees the same load on a
 * shared machine; the first `warmup` rounds are not counted. Reports training tokens/s, best and
 * median, and the ratios ours / torch against the faster BLAS setting (by best time).
 */
export const alternateSteps = async <C>(o: AlternateOptions<C>) => {
  const ours = await o.ours(o.threads)
  const { workers, skipped } = await startTorchWorkers(o.script, o.args, o.threads)
  const checks = workers.map((w) => o.check(w.first.check as Record<string, unknown>))
  const oursTimes: number[] = []
  const torchTimes: number[][] = workers.map(() => [])
  for (let round = 0; round < o.warmup + o.reps; round++) {
    const t0 = performance.now()
    await ours.step()
    const seconds = (performance.now() - t0) / 1000
    if (round >= o.warmup) oursTimes.push(seconds)
    for (const [i, w] of workers.entries()) {
      const answer = Number((await w.request("step")).seconds)
      if (round >= o.warmup) torchTimes[i].push(answer)
    }
  }
  for (const w of workers) w.close()
  await ours.release()
  const mine = timing(o.tokens, oursTimes)
  const torchRuns = workers.map((w, i) => ({ env: w.env, blas: w.first.blas, torch: w.first.torch, ...timing(o.tokens, torchTimes[i]) }))
  const torch = torchRuns.length === 0 ? undefined : torchRuns.reduce((a, b) => (b.best_seconds < a.best_seconds ? b : a))
  return {
    threads: o.threads,
    ours: mine,
    torch: torch ? { fastest: torch, runs: torchRuns } : { skipped },
    ratio_ours_over_torch: torch ? mine.tokens_per_s / torch.tokens_per_s : undefined,
    ratio_of_medians: torch ? mine.median_tokens_per_s / torch.median_tokens_per_s : undefined,
    checks,
  }
}

/**
 * The end of a training bench: the skip reason if torch was not there, the result in
 * bench/results/<name>.json, and a failing exit code when the check against torch failed.
 */
export const finishTrainingBench = (name: string, what: string, result: { readonly check?: { readonly pass: boolean } }, skipped: string | undefined) => {
  if (skipped) console.log(`torch comparison skipped: ${skipped}`)
  mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
  writeFileSync(join(import.meta.dirname, "results", `${name}.json`), `${JSON.stringify(result, null, 2)}\n`)
  if (result.check && !result.check.pass) {
    console.error(`${what} differs from PyTorch's beyond the tolerances: the timings compare different computations`)
    process.exitCode = 1
  }
}

/** One alternateSteps result as a line: tokens/s, step times and the ratios, both sides. */
export const alternationLine = (m: Awaited<ReturnType<typeof alternateSteps>>): string => {
  const fmt = (x: number | undefined) => (x === undefined ? "-" : x.toFixed(x >= 100 ? 0 : 2))
  const ms = (x: number | undefined) => (x === undefined ? "-" : (x * 1000).toFixed(0))
  const t = "fastest" in m.torch ? m.torch.fastest : undefined
  return (
    `${m.threads} thread(s): ours ${fmt(m.ours.tokens_per_s)} tok/s (best ${ms(m.ours.best_seconds)} ms/step, median ${ms(m.ours.median_seconds)}), torch ${fmt(t?.tokens_per_s)} tok/s (best ${ms(t?.best_seconds)}, median ${ms(t?.median_seconds)}); ` +
    `ratio ${fmt(m.ratio_ours_over_torch)} of best, ${fmt(m.ratio_of_medians)} of medians (goal >= 1)` +
    (t ? `\n  torch ${String(t.torch)}, fastest with ${JSON.stringify(t.env)}, BLAS ${JSON.stringify(t.blas)}` : "")
  )
}

/** The benched model's sizes, as the training benches record them. */
export const modelSizes = (c: { hiddenSize: number; numLayers: number; numHeads: number; numKvHeads: number; intermediateSize: number; vocabSize: number }) => ({
  hidden: c.hiddenSize,
  layers: c.numLayers,
  heads: c.numHeads,
  kvHeads: c.numKvHeads,
  intermediate: c.intermediateSize,
  vocab: c.vocabSize,
})
