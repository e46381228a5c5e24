// Soft-prompt training benchmark on the CPU, side by side in one run against plain PyTorch
// autograd + torch.optim.AdamW (bench/reference/soft_prompt_train_torch.py, Debian's python3-torch;
// see torch-reference.ts). Both sides train the same k = 16 soft prompt in front of the same frozen
// random tiny Llama (train.bench's model, read from the same safetensors file), from the same
// initial vectors, on the same right-padded batch of 8 rows of 48-64 tokens with next-token
// targets: the step stages/soft-prompts/train.ts builds (promptVariant, objectiveLoss: the mean
// cross-entropy over the scored positions; clipping at 1, AdamW lr 1e-2, weight decay 0.01 on the
// prompt rather than the default 1e-4, so the decay term is compared too).
// Check first: 3 steps on both sides must give the same loss and gradient norm per step (relative
// 1e-4: float32 sums in different orders) and the same prompt update after them (relative
// Frobenius 1e-2, as train.bench: AdamW's sign-like steps on near-zero gradients make elementwise
// bounds measure float32 noise); the bench fails otherwise. Then alternating steps (torch-reference.ts
// alternateSteps) at 1 thread and at the machine's count, reported as trained tokens per second.
// Writes bench/results/soft-prompt.json.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { availableParallelism, tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { buildTrainStep, Graph } from "../src/graph/index.ts"
import { mulberry32 } from "../src/core/random.ts"
import { loadCheckpoint } from "../src/models/checkpoint.ts"
import { externalWeights, placeWeights, writeGraph } from "../src/models/graph-weights.ts"
import { tinyLlama, writeRandomCheckpoint } from "../src/models/init.ts"
import { prepareVariant, variantNames, variantParams } from "../src/models/variant.ts"
import { createSession, releaseSession } from "../src/runtime/session.ts"
import { initTrainState, type TrainState, trainStep } from "../src/runtime/train.ts"
import { shiftedTargets } from "../stages/soft-prompts/examples.ts"
import { lossBatch, lossBatchSpec, objectiveLoss, promptVariant } from "../stages/soft-prompts/soft-prompt.ts"
import { alternateSteps, alternationLine, finishTrainingBench, modelSizes, ourTrainSteps, type StepFigures, stepAgreement, updateDifference } from "./torch-reference.ts"

const threadCounts = [...new Set([1, Math.min(availableParallelism(), 8)])]
const warmup = 2
const reps = 5
const checkSteps = 3
const config = tinyLlama({ vocabSize: 2048, hiddenSize: 256, numLayers: 4, numHeads: 4, numKvHeads: 2, intermediateSize: 704, maxPositions: 512, eosTokenIds: [2] })
const k = 16
const rows = 8
const adamw = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 1 }
const lr = 1e-2
const lossRtol = 1e-4
const updateRtol = 1e-2

const rand = mulberry32(13)
const randInt = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo))

const work = mkdtempSync(join(tmpdir(), "pipe-bench-soft-prompt-"))
try {
  const modelDir = join(work, "model")
  await Effect.runPromise(writeRandomCheckpoint(modelDir, config, { seed: 1, std: 0.1 }))
  const ckpt = await Effect.runPromise(loadCheckpoint(modelDir))
  const H = config.hiddenSize
  const examples = Array.from({ length: rows }, () => {
    const ids = Array.from({ length: randInt(48, 65) }, () => randInt(3, config.vocabSize))
    return { ids, targets: shiftedTargets(ids, 0, 1) }
  })
  const batch = lossBatch(examples, examples.map((_, i) => i), 0, 0)
  const start = Float32Array.from({ length: k * H }, () => (rand() - 0.5) * 0.2)

  // --- ours: soft-prompt-train's step graph
  const variant = promptVariant(ckpt, { kind: "plain", k, values: start }, true)
  const { specs, initial } = variantParams(variant)
  const placement = await Effect.runPromise(placeWeights(ckpt, join(work, "graph")))
  const g = new Graph("soft_prompt_train")
  const forward = prepareVariant(g, variant, externalWeights(g, placement), { training: true })
  buildTrainStep({
    graph: g,
    params: Object.fromEntries(Object.entries(specs).map(([n, s]) => [n, { ...s, decay: true }])),
    batch: lossBatchSpec(0),
    adamw,
    loss: (sub, p, b) => objectiveLoss(sub, forward, ckpt, b, p).mean,
  })
  const file = await Effect.runPromise(writeGraph(g, placement, "soft-prompt-train-step"))
  const sessionAt = (threads: number) => Effect.runPromise(createSession(file, { intraOpThreads: threads }))
  const fresh = () => initTrainState(Object.fromEntries(Object.entries(initial).map(([n, v]) => [n, new ort.Tensor("float32", v.data, v.shape)])))
  const step = (session: Awaited<ReturnType<typeof sessionAt>>, s: TrainState) => Effect.runPromise(trainStep(session, s, batch.feeds, lr))

  const checkSession = await sessionAt(1)
  let state = fresh()
  const ourCheck = { loss: [] as number[], grad_norm: [] as number[] }
  for (let i = 0; i < checkSteps; i++) {
    const r = await step(checkSession, state)
    state = r.state
    ourCheck.loss.push(r.loss)
    ourCheck.grad_norm.push(r.gradNorm)
  }
  await Effect.runPromise(releaseSession(checkSession))
  const ourLast = state.params[variantNames.softPrompt].data as Float32Array

  // --- reference: the same step in PyTorch
  const tensorJson = (t: ort.Tensor) => ({ shape: [...t.dims], data: Array.from(t.data as ArrayLike<number | bigint>, Number) })
  const specFile = join(work, "spec.json")
  writeFileSync(
    specFile,
    JSON.stringify({
      check_steps: checkSteps,
      lr,
      adamw: { beta1: adamw.beta1, beta2: adamw.beta2, eps: adamw.eps, weight_decay: adamw.weightDecay, max_grad_norm: adamw.maxGradNorm },
      prompt: { shape: [k, H], data: Array.from(start) },
      batch: Object.fromEntries(Object.entries(batch.feeds).map(([n, t]) => [n, tensorJson(t)])),
    }),
  )

  type TorchCheck = StepFigures & { prompt_last: number[] }
  const compare = (c: TorchCheck) => {
    const { lossRel, normRel } = stepAgreement(ourCheck, c)
    const updateRel = updateDifference([{ ours: ourLast, torch: c.prompt_last, start }]).rel
    return {
      torch: { loss: c.loss, grad_norm: c.grad_norm },
      loss_max_rel_diff: lossRel,
      grad_norm_max_rel_diff: normRel,
      last_step_update_rel_frobenius_diff: updateRel,
      pass: lossRel <= lossRtol && normRel <= lossRtol && updateRel <= updateRtol,
    }
  }

  const measured = []
  for (const threads of threadCounts)
    measured.push(
      await alternateSteps({
        threads,
        tokens: batch.tokens,
        warmup,
        reps,
        script: "soft_prompt_train_torch.py",
        args: [modelDir, specFile, String(threads)],
        ours: ourTrainSteps(file, fresh, batch.feeds, lr),
      check: (first) => compare(first as TorchCheck),
      }),
    )
  const checks = measured.flatMap((m) => m.checks)
  const skipped = measured.map((m) => ("skipped" in m.torch ? m.torch.skipped : undefined)).find((x) => x !== undefined)
  const check = checks.length === 0 ? undefined : { steps: checkSteps, ours: ourCheck, tolerances: { loss_and_grad_norm_rel: lossRtol, last_step_update_rel_frobenius: updateRtol }, pass: checks.every((c) => c.pass) }
  const result = {
    model: modelSizes(config),
    soft_prompt: { k, trainable: k * H },
    batch: { rows, width: batch.computed / rows, scored_tokens: batch.tokens },
    adamw: { lr, ...adamw },
    warmup,
    reps,
    goal_ratio: 1,
    check,
    by_threads: measured,
  }
  console.log(`soft-prompt train step (k = ${k}) on tiny Llama ${JSON.stringify(result.model)}; batch ${rows} x ${batch.computed / rows} (right-padded), ${batch.tokens} scored tokens`)
  for (const c of checks)
    console.log(
      `check against torch over ${checkSteps} steps: loss rel diff ${c.loss_max_rel_diff.toExponential(1)}, grad norm ${c.grad_norm_max_rel_diff.toExponential(1)} (tol ${lossRtol}); prompt update rel Frobenius ${c.last_step_update_rel_frobenius_diff.toExponential(1)} (tol ${updateRtol}): ${c.pass ? "pass" : "FAIL"}`,
    )
  for (const m of measured) console.log(alternationLine(m))
  finishTrainingBench("soft-prompt", "the soft-prompt step", result, skipped)
} finally {
  rmSync(work, { recursive: true, force: true })
}
