// Model benchmark on the CPU: a random tiny Llama (hidden 256, 4 layers, 4 heads / 2 KV heads,
// vocab 2048) made by src/models/init.ts. Measures, side by side in one run against a plain
// PyTorch implementation of the same model reading the same safetensors file
// (bench/reference/llama_torch.py, Debian's python3-torch on /usr/bin/python3; install
// libopenblas0 too, or torch's matmuls run on the reference BLAS and the ratio means little):
//   generation tokens/s at batch 1 and 16 (32-token prompts, 64 new tokens, temperature 1,
//     top-p 0.9, KV cache; ours: src/models/generate.ts, one session.run per token, and the
//     ONNX Loop decode graph with 16 tokens per run)
//   scoring tokens/s (one forward over 16 x 128 given tokens, full logits)
// and reports ours / torch. Same thread count on both sides. A greedy continuation is compared
// token by token as a check that both sides run the same model. Without torch the comparison is
// reported as skipped. Writes bench/results/models.json.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { availableParallelism, tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { Graph } from "../src/graph/index.ts"
import { loadCheckpoint } from "../src/models/checkpoint.ts"
import { buildForwardGraph, forwardNames } from "../src/models/forward.ts"
import { type GenerationRequest, makeGenerator } from "../src/models/generate.ts"
import { placeWeights, writeGraph } from "../src/models/graph-weights.ts"
import { tinyLlama, writeRandomCheckpoint } from "../src/models/init.ts"
import { mulberry32 } from "../src/core/random.ts"
import { createSession, runSession } from "../src/runtime/session.ts"
import { runTorchReference } from "./torch-reference.ts"

const threads = Math.min(availableParallelism(), 8)
// best of `reps` on both sides: the CI machine is small and shared, the minimum is the least noisy
const reps = 5
const promptLen = 32
const newTokens = 64
const generation = [1, 16].map((batch) => ({ batch, prompt_len: promptLen, new_tokens: newTokens }))
const scoring = { batch: 16, seq_len: 128 }
const checkPrompt = [1, 5, 9, 13, 17]
const checkTokens = 16
const loopSteps = 16
const config = tinyLlama({ vocabSize: 2048, hiddenSize: 256, numLayers: 4, numHeads: 4, numKvHeads: 2, intermediateSize: 704, maxPositions: 512, eosTokenIds: [2] })

const timed = async (fn: () => Promise<unknown>): Promise<number> => {
  await fn() // warm-up
  const times: number[] = []
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now()
    await fn()
    times.push((performance.now() - t0) / 1000)
  }
  return Math.min(...times)
}

const work = mkdtempSync(join(tmpdir(), "pipe-bench-models-"))
try {
  const modelDir = join(work, "model")
  // std 0.1: next-token distributions peaked enough that greedy choices are not float ties
  await Effect.runPromise(writeRandomCheckpoint(modelDir, config, { seed: 1, std: 0.1 }))
  const ckpt = await Effect.runPromise(loadCheckpoint(modelDir))
  const rand = mulberry32(7)
  const randomIds = (n: number) => Array.from({ length: n }, () => 3 + Math.floor(rand() * (config.vocabSize - 3)))

  // --- ours: generation
  // stepsPerRun 1: one session.run per token; 16: ONNX Loop decode graph, 16 tokens per run
  const generator = await Effect.runPromise(makeGenerator(ckpt, { graphDir: join(work, "graph"), intraOpThreads: threads }))
  const looped = await Effect.runPromise(makeGenerator(ckpt, { graphDir: join(work, "graph-loop"), intraOpThreads: threads, stepsPerRun: loopSteps }))
  const ours: { generation: Array<Record<string, number>>; generation_loop: Array<Record<string, number>>; scoring?: Record<string, number> } = { generation: [], generation_loop: [] }
  for (const gen of generation) {
    const requests: GenerationRequest[] = Array.from({ length: gen.batch }, (_, i) => ({
      prompt: randomIds(promptLen),
      maxNewTokens: newTokens,
      temperature: 1,
      topP: 0.9,
      seed: i,
      stopTokenIds: [],
    }))
    const seconds = await timed(() => Effect.runPromise(generator.generate(requests, { batchSize: gen.batch })))
    ours.generation.push({ ...gen, seconds, tokens_per_s: (gen.batch * newTokens) / seconds })
    const loopSeconds = await timed(() => Effect.runPromise(looped.generate(requests, { batchSize: gen.batch })))
    ours.generation_loop.push({ ...gen, steps_per_run: loopSteps, seconds: loopSeconds, tokens_per_s: (gen.batch * newTokens) / loopSeconds })
  }
  const [greedy] = await Effect.runPromise(generator.generate([{ prompt: checkPrompt, maxNewTokens: checkTokens, temperature: 0, stopTokenIds: [] }]))

  // --- ours: scoring (full logits of given tokens)
  const g = new Graph("score")
  const placement = await Effect.runPromise(placeWeights(ckpt, join(work, "graph")))
  buildForwardGraph(g, ckpt, placement)
  const session = await Effect.runPromise(Effect.flatMap(writeGraph(g, placement, "score"), (file) => createSession(file, { intraOpThreads: threads })))
  const n = scoring.batch * scoring.seq_len
  const feeds = {
    [forwardNames.ids]: new ort.Tensor("int64", BigInt64Array.from(randomIds(n), BigInt), [scoring.batch, scoring.seq_len]),
    [forwardNames.mask]: new ort.Tensor("int64", new BigInt64Array(n).fill(1n), [scoring.batch, scoring.seq_len]),
  }
  const scoreSeconds = await timed(() => Effect.runPromise(runSession(session, feeds)))
  ours.scoring = { ...scoring, seconds: scoreSeconds, tokens_per_s: n / scoreSeconds }

  // --- reference: PyTorch, once per BLAS setting (torch-reference.ts); each workload is
  // compared with the faster run
  const spec = { threads, reps, generation, scoring, check_prompt: checkPrompt, check_tokens: checkTokens }
  const { runs: torchRuns, skipped: torchSkipped } = runTorchReference("llama_torch.py", [modelDir, JSON.stringify(spec)], threads)
  const best = <T extends { tokens_per_s: number }>(pick: (r: Record<string, unknown>) => T): T | undefined =>
    torchRuns.length === 0 ? undefined : torchRuns.map(pick).reduce((a, b) => (b.tokens_per_s > a.tokens_per_s ? b : a))
  const torch = torchRuns[0]

  type Timing = { tokens_per_s: number }
  const ratio = (a: Timing, b: Timing | undefined) => (b ? a.tokens_per_s / b.tokens_per_s : undefined)
  const torchGen = torch ? generation.map((_, i) => best((r) => (r.generation as Timing[])[i])!) : undefined
  const torchScore = best((r) => r.scoring as Timing)
  const torchGreedy = torch?.greedy_check as number[] | undefined
  const result = {
    model: { hidden: config.hiddenSize, layers: config.numLayers, heads: config.numHeads, kvHeads: config.numKvHeads, intermediate: config.intermediateSize, vocab: config.vocabSize },
    threads,
    reps,
    ours,
    torch: torch ? { best: { generation: torchGen, scoring: torchScore }, runs: torchRuns } : { skipped: torchSkipped },
    ratios_ours_over_torch: torch
      ? {
          generation_batch1: ratio(ours.generation[0] as Timing, torchGen?.[0]),
          generation_batch16: ratio(ours.generation[1] as Timing, torchGen?.[1]),
          generation_loop_batch1: ratio(ours.generation_loop[0] as Timing, torchGen?.[0]),
          generation_loop_batch16: ratio(ours.generation_loop[1] as Timing, torchGen?.[1]),
          scoring: ratio(ours.scoring as Timing, torchScore),
        }
      : undefined,
    greedy_check: torchGreedy ? { ours: greedy.tokens, torch: torchGreedy, equal: greedy.tokens.join() === torchGreedy.join() } : undefined,
  }

  const fmt = (x: number | undefined) => (x === undefined ? "-" : x.toFixed(x >= 100 ? 0 : 2))
  console.log(`tiny Llama ${JSON.stringify(result.model)}, ${threads} threads, best of ${reps}`)
  for (const [i, gen] of generation.entries()) {
    console.log(`generation batch ${gen.batch}: ours ${fmt(ours.generation[i].tokens_per_s)} tok/s, torch ${fmt(torchGen?.[i].tokens_per_s)} tok/s, ratio ${fmt(ratio(ours.generation[i] as Timing, torchGen?.[i]))}`)
    console.log(`generation batch ${gen.batch}, ONNX Loop ${loopSteps} steps/run: ours ${fmt(ours.generation_loop[i].tokens_per_s)} tok/s, ratio ${fmt(ratio(ours.generation_loop[i] as Timing, torchGen?.[i]))}`)
  }
  console.log(`scoring ${scoring.batch}x${scoring.seq_len}: ours ${fmt(ours.scoring.tokens_per_s)} tok/s, torch ${fmt(torchScore?.tokens_per_s)} tok/s, ratio ${fmt(ratio(ours.scoring as Timing, torchScore))}`)
  if (torch) console.log(`torch ${String(torch.torch)} with BLAS ${JSON.stringify(torch.blas)}`)
  if (torchSkipped) console.log(`torch comparison skipped: ${torchSkipped}`)
  if (result.greedy_check) console.log(`greedy continuation equal to torch's: ${result.greedy_check.equal}`)
  mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
  writeFileSync(join(import.meta.dirname, "results", "models.json"), `${JSON.stringify(result, null, 2)}\n`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
