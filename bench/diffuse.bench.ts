// diffuse-train on the shipped tiny model and the shipped training prompts (3 prompts, 31 targets;
// the pipeline's defaults: LoRA rank 4 on all seven projections, AdamW), 3 passes = 9 optimizer
// steps, a few seconds. Reports the train step's throughput (computed tokens, padding included,
// per second of step time; median over the steps) and, side by side in the same process, the
// forward-only loss evaluator over the same rows: their ratio is what the backward pass and the
// AdamW update cost on top of the forward.
// Then diffuse-sample's generation (the defaults: 250 rows a batch, at most 8 new tokens, T 1) of
// 250 samples of each training prompt, with the rows that ask one prompt sharing its prefill (the
// default) and, side by side, each row prefilling its own prompt; the tokens must be the same.
import { Effect } from "effect"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { openModel } from "../stages/baking/model.ts"
import { diffuseContexts } from "../stages/diffuse/contexts.ts"
import { defaults } from "../stages/diffuse/experiment.ts"
import { readPromptSet } from "../stages/diffuse/prompts.ts"
import { diffuseTrain, lossEvaluator, setRows } from "../stages/diffuse/train.ts"
import { endOfTurnId } from "../stages/diffuse/contexts.ts"
import { type GenerationRequest, makeGenerator } from "../src/models/generate.ts"
import { hash32 } from "../src/core/random.ts"
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

  // sampling as diffuse-sample does it: sample j of a prompt continues its context j mod (contexts)
  const s = defaults.sample
  const eot = await Effect.runPromise(endOfTurnId(tokenizer))
  const samples = 250
  const requests: GenerationRequest[] = prompts.prompts.flatMap((p, pi) => {
    const cs = contexts.filter((c) => c.prompt === pi)
    return Array.from({ length: samples }, (_, j) => ({ prompt: cs[j % cs.length].ids, maxNewTokens: s.maxNewTokens, temperature: s.temperature, seed: hash32(`${p.id}/${j}`, s.seed), stopTokenIds: [eot, ...checkpoint.config.eosTokenIds] }))
  })
  const generator = await Effect.runPromise(makeGenerator(checkpoint, { graphDir: join(dir, "sample"), tokenizer }))
  const sampling = async (sharePrefill: boolean) => {
    const t = performance.now()
    const out = await Effect.runPromise(generator.generate(requests, { batchSize: s.batchSize, sharePrefill }))
    return { seconds: (performance.now() - t) / 1000, tokens: out.map((o) => o.tokens.join()) }
  }
  await sampling(true) // warm-up
  const runs = { shared: [] as number[], separate: [] as number[] }
  let sameTokens = true
  for (let i = 0; i < 3; i++) {
    const a = await sampling(true)
    const b = await sampling(false)
    runs.shared.push(a.seconds)
    runs.separate.push(b.seconds)
    sameTokens &&= a.tokens.every((t, j) => t === b.tokens[j])
  }
  const result = {
    machine: { cpus: cpus().length, model: cpus()[0]?.model },
    setup: "diffuse-train defaults on models/tiny-chat, datasets/diffuse/train, 3 passes (9 steps), CPU",
    training_tokens_per_s_median: stepTokensPerS,
    forward_loss_tokens_per_s: forwardTokensPerS,
    forward_over_training_speed: forwardTokensPerS / stepTokensPerS,
    sampling: {
      setup: `${requests.length} generations (${samples} per training prompt, ${contexts.length} contexts), batch ${s.batchSize}, <= ${s.maxNewTokens} new tokens, T ${s.temperature}; median of 3 alternating runs`,
      shared_prefill_seconds: median(runs.shared),
      separate_prefill_seconds: median(runs.separate),
      speedup: median(runs.separate) / median(runs.shared),
      same_tokens: sameTokens,
    },
  }
  console.log(`diffuse-train: ${stepTokensPerS.toFixed(0)} tokens/s per train step (median); forward-only loss ${forwardTokensPerS.toFixed(0)} tokens/s (${result.forward_over_training_speed.toFixed(2)}x)`)
  console.log(`diffuse-sample: ${requests.length} generations in ${result.sampling.shared_prefill_seconds.toFixed(2)} s with shared prefills, ${result.sampling.separate_prefill_seconds.toFixed(2)} s without (${result.sampling.speedup.toFixed(2)}x); same tokens: ${sameTokens}`)
  if (!sameTokens) throw new Error("shared and separate prefills sampled different tokens")
  mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
  writeFileSync(join(import.meta.dirname, "results", "diffuse.json"), JSON.stringify(result, null, 2))
} finally {
  rmSync(dir, { recursive: true, force: true })
}
