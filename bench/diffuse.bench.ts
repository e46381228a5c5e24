// diffuse-train on the shipped tiny model and the shipped training prompts (3 prompts, 31 targets;
// the pipeline's defaults: LoRA rank 4 on all seven projections, AdamW), 3 passes = 9 optimizer
// steps, a few seconds. Reports the train step's throughput (computed tokens, padding included,
// per second of step time; median over the steps) and, side by side in the same process, the
// forward-only loss evaluator over the same rows: their ratio is what the backward pass and the
// AdamW update cost on top of the forward.
import { Effect } from "effect"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { openModel } from "../stages/baking/model.ts"
import { diffuseContexts } from "../stages/diffuse/contexts.ts"
import { defaults } from "../stages/diffuse/experiment.ts"
import { readPromptSet } from "../stages/diffuse/prompts.ts"
import { diffuseTrain, lossEvaluator, setRows } from "../stages/diffuse/train.ts"
import { type Metric, stageContext } from "../tests/stage-harness.ts"

const repo = resolve(import.meta.dirname, "..")
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const dir = mkdtempSync(join(tmpdir(), "pipe-bench-diffuse-"))
try {
  const modelDir = join(repo, "models/tiny-chat")
  const prompts = await Effect.runPromise(readPromptSet(join(repo, "datasets/diffuse/train")))
  const metrics: Metric[] = []
  const params = { ...defaults.train, passes: 3, checkpointEvery: 0 }
  await Effect.runPromise(diffuseTrain.spec.run({ params, inputs: { model: { path: modelDir, hash: "", size: 0 }, prompts }, ctx: stageContext(join(dir, "train"), { metrics }) }) as never)
  const stepTokensPerS = median(metrics.filter((m) => m.name === "tokens_per_s").map((m) => m.value))

  // the forward-only evaluator on the same rows, timed over 5 evaluations of the whole set
  const { checkpoint, tokenizer } = await Effect.runPromise(openModel(modelDir))
  const contexts = await Effect.runPromise(diffuseContexts(tokenizer, prompts.prompts))
  const rows = setRows(contexts, prompts)
  const evaluator = await Effect.runPromise(lossEvaluator({ checkpoint }, rows, (c) => contexts[c].prompt, prompts.prompts.length, { graphDir: join(dir, "eval"), device: { kind: "cpu" }, batchSize: params.batchSize }))
  await Effect.runPromise(evaluator.evaluate())
  const tokens = rows.reduce((n, r) => n + r.contextIds.length + r.targetIds.length - 1, 0)
  const times: number[] = []
  for (let i = 0; i < 5; i++) {
    const t = performance.now()
    await Effect.runPromise(evaluator.evaluate())
    times.push((performance.now() - t) / 1000)
  }
  await Effect.runPromise(evaluator.release)
  const forwardTokensPerS = tokens / median(times)
  const result = {
    machine: { cpus: cpus().length, model: cpus()[0]?.model },
    setup: "diffuse-train defaults on models/tiny-chat, datasets/diffuse/train, 3 passes (9 steps), CPU",
    training_tokens_per_s_median: stepTokensPerS,
    forward_loss_tokens_per_s: forwardTokensPerS,
    forward_over_training_speed: forwardTokensPerS / stepTokensPerS,
  }
  console.log(`diffuse-train: ${stepTokensPerS.toFixed(0)} tokens/s per train step (median); forward-only loss ${forwardTokensPerS.toFixed(0)} tokens/s (${result.forward_over_training_speed.toFixed(2)}x)`)
  mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
  writeFileSync(join(import.meta.dirname, "results", "diffuse.json"), JSON.stringify(result, null, 2))
} finally {
  rmSync(dir, { recursive: true, force: true })
}
