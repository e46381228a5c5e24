// Scaffolding for tests that call a stage's `spec.run({ params, inputs, ctx })` directly, without the
// engine: a StageContext collecting logs and metrics into arrays, and the TensorsValue a consuming
// stage would receive for a producing stage's TensorsOutput (written to a safetensors file, as the
// engine's store does, and read back through its header).
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import type { StageContext, TensorsOutput, TensorsValue } from "../src/engine/index.ts"
import { readHeader, readTensor, type Tensor, toFloat32, writeFile } from "../src/core/safetensors.ts"

export interface Metric {
  readonly name: string
  readonly value: number
  readonly step: number | undefined
}

export interface StageContextOptions {
  /** receives each `ctx.log` line */
  readonly logs?: string[]
  /** receives each `ctx.metric` */
  readonly metrics?: Metric[]
  /** `progress.set(stopAt)` throws: training stages call it after that step's checkpoint, so this
   *  simulates a kill right after the checkpoint */
  readonly stopAt?: number
}

class Stop extends Error {}

/** A CPU context on `workDir` (node and key "test", seed 0: the stages under test read their seeds from params). */
export const stageContext = (workDir: string, options: StageContextOptions = {}): StageContext => ({
  node: "test",
  key: "test",
  device: { kind: "cpu" },
  seed: 0,
  workDir,
  log: (message) => options.logs?.push(message),
  metric: (name, value, step) => options.metrics?.push({ name, value, step }),
  progress: {
    total: () => {},
    advance: () => {},
    set: (step) => {
      if (step === options.stopAt) throw new Stop(`stopped at step ${step}`)
    },
  },
})

/** A file or directory input as `spec.run` receives it (a direct call needs no hash or size). */
export const inputRef = (p: string) => ({ path: p, hash: "", size: 0 })

/** `output` as a consumer receives it: tensors are written to `dir`/tensors.safetensors (a fresh
 *  temporary directory by default); a path output is read where it is. */
export const tensorsValue = async (output: TensorsOutput, dir?: string): Promise<TensorsValue> => {
  let file: string
  if ("path" in output) file = output.path
  else {
    file = path.join(dir ?? fs.mkdtempSync(path.join(tmpdir(), "pipe-tensors-")), "tensors.safetensors")
    await Effect.runPromise(writeFile(file, output.tensors, output.metadata ?? {}))
  }
  const header = await Effect.runPromise(readHeader(file))
  return { path: file, hash: "", size: fs.statSync(file).size, header, metadata: header.metadata, read: (name) => Effect.runSync(readTensor(header, name)) }
}

/** Per tensor of `a`, the largest absolute difference to the same-named tensor of `b` (as float32). */
export const maxDifferences = (a: ReadonlyMap<string, Tensor>, b: ReadonlyMap<string, Tensor>): Record<string, number> =>
  Object.fromEntries(
    [...a].map(([name, t]) => {
      const x = toFloat32(t)
      const y = toFloat32(b.get(name)!)
      let max = 0
      for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs(x[i] - y[i]))
      return [name, max]
    }),
  )

/** The step recorded in the training checkpoint of any node in `cacheDir`/work (its metadata), 0 when there is none yet. */
export const checkpointStepIn = (cacheDir: string): number => {
  const work = path.join(cacheDir, "work")
  for (const key of fs.existsSync(work) ? fs.readdirSync(work) : []) {
    const file = path.join(work, key, "checkpoint.safetensors")
    const header = fs.existsSync(file) ? Effect.runSync(Effect.option(readHeader(file))) : undefined
    if (header?._tag === "Some") return Number(header.value.metadata.step)
  }
  return 0
}
