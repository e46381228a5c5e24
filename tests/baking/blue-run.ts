// Running pipelines/blue.ts in this process against a sandboxed cache, as the end-to-end baking
// tests do, and the overrides that make it a seconds-long run on a random checkpoint.
import { Effect } from "effect"
import * as path from "node:path"
import { runPipeline, silentReporter, Store } from "../../src/engine/index.ts"
import type { Sandbox } from "../engine/helpers.ts"

export const bluePipelineFile = path.resolve(import.meta.dirname, "../../pipelines/blue.ts")

export const runBlue = async (sb: Sandbox, overrides: ReadonlyArray<string>, rerun: ReadonlyArray<string> = []) => {
  const store = new Store(sb.cacheDir)
  try {
    return await Effect.runPromise(runPipeline({ store, pipelineFile: bluePipelineFile, overrides, rerun, runsDir: sb.runsDir, reporter: silentReporter }))
  } finally {
    store.close()
  }
}

/** A few questions, one short sample each, one epoch: the whole pipeline in seconds. */
export const smallBlue = (modelDir: string): ReadonlyArray<string> => [
  `model.path=${modelDir}`,
  "train_questions.n=6",
  "validation_questions.n=3",
  "heldout_questions.n=3",
  "sample_train.n=1",
  "sample_train.maxNewTokens=12",
  "sample_validation.maxNewTokens=12",
  "lora-train.epochs=1",
  "evaluate_base.maxNewTokens=8",
  "evaluate_prompted.maxNewTokens=8",
  "evaluate_baked.maxNewTokens=8",
]
