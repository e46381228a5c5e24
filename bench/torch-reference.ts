// Runs a PyTorch reference script of bench/reference/ on Debian's torch (/usr/bin/python3), once
// per BLAS setting: Debian's torch hands matmuls to OpenBLAS, whose own thread pool fights
// torch's OpenMP threads on small matrices, so it runs once with single-threaded BLAS (best for
// small matmuls, e.g. decode steps) and once with threaded BLAS and one OpenMP thread (best for
// big matmuls). Callers compare each workload with the faster run. Without torch the comparison
// is skipped, with the reason.
import { spawnSync } from "node:child_process"
import { join } from "node:path"

export interface TorchRuns {
  /** the JSON line each run printed last, with the BLAS environment it ran under */
  readonly runs: Array<Record<string, unknown>>
  readonly skipped?: string
}

export const runTorchReference = (script: string, args: ReadonlyArray<string>, threads: number): TorchRuns => {
  const blasSettings = [
    { OPENBLAS_NUM_THREADS: "1", OMP_NUM_THREADS: String(threads) },
    { OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: "1" },
  ]
  const runs: Array<Record<string, unknown>> = []
  for (const env of blasSettings) {
    const py = spawnSync("/usr/bin/python3", [join(import.meta.dirname, "reference", script), ...args], { encoding: "utf8", env: { ...process.env, ...env }, maxBuffer: 256 * 2 ** 20 })
    if (py.error) return { runs, skipped: `cannot run /usr/bin/python3: ${py.error.message}` }
    if (py.status !== 0)
      return {
        runs,
        skipped: /No module named 'torch'/.test(py.stderr) ? "torch is not installed for /usr/bin/python3 (apt-get install -y python3-torch)" : `${script} exited with ${py.status}: ${py.stderr.trim().split("\n").at(-1)}`,
      }
    runs.push({ env, ...(JSON.parse(py.stdout.trim().split("\n").at(-1)!) as Record<string, unknown>) })
  }
  return { runs }
}
