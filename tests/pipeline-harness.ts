// Scaffolding for tests that run one of the repository's pipelines end to end through the engine,
// with a cache and run folders in a temporary directory, and read back its metrics.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { runPipeline, silentReporter, Store } from "../src/engine/index.ts"

const repo = path.resolve(import.meta.dirname, "..")

/** Runs `pipelines/...` (a path from the repository root) with `--set` overrides; cache and runs under `dir`. */
export const runRepoPipeline = (dir: string, file: string, overrides: ReadonlyArray<string>) => {
  const store = new Store(path.join(dir, "cache"))
  return Effect.runPromise(runPipeline({ store, pipelineFile: path.join(repo, file), overrides, runsDir: path.join(dir, "runs"), reporter: silentReporter })).finally(() => store.close())
}

export interface RunMetric {
  readonly node: string
  readonly name: string
  readonly step: number
  readonly value: number
}

/** The metrics.jsonl of a run made by runRepoPipeline in `dir`. */
export const runMetrics = (dir: string, runId: string): RunMetric[] =>
  fs
    .readFileSync(path.join(dir, "runs", runId, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as RunMetric)

/** A node's epoch_loss metrics in epoch order. */
export const epochLosses = (metrics: ReadonlyArray<RunMetric>, node: (name: string) => boolean): number[] =>
  metrics
    .filter((m) => node(m.node) && m.name === "epoch_loss")
    .sort((a, b) => a.step - b.step)
    .map((m) => m.value)
