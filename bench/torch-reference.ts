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
