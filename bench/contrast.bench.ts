// Contrastive decoding speed: two models combined in one graph (src/models/ensemble.ts, the
// contrastive-decode stage's path: two members, logit-space weights (1.5, -0.5), KL(start ||
// compare) per token) against one model alone (src/models/generate.ts), side by side in one run on
// the shipped models/tiny-chat (both members are it, the starting one with a system turn as text
// prefix, so the weights are read once and the compute is doubled, as with two checkpoints of one
// size). 16 prompts x 32 new tokens, sampled (temperature 1, top-p 0.95), no stop token, KV cache;
// one thread on both sides; best of 5 alternating repetitions. Reports tokens/s of each and the
// ratio two-model / one-model. Writes bench/results/contrast.json.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import { loadCheckpoint } from "../src/models/checkpoint.ts"
import { makeEnsemble } from "../src/models/ensemble.ts"
import { type GenerationRequest, makeGenerator } from "../src/models/generate.ts"
import { loadTokenizer } from "../src/text/tokenizer.ts"

const modelDir = join(import.meta.dirname, "../models/tiny-chat")
const reps = 5
const batch = 16
const newTokens = 32

const work = mkdtempSync(join(tmpdir(), "pipe-bench-contrast-"))
try {
  const ckpt = await Effect.runPromise(loadCheckpoint(modelDir))
  const tokenizer = await Effect.runPromise(loadTokenizer(modelDir))
  const questions = ["What age is Kodis?", "Where does Mira live?", "What is Nerol's job?", "Tell me Guste's favourite food."]
  const prompts = Array.from({ length: batch }, (_, i) => tokenizer.encode(`<|user|>${questions[i % questions.length]}<|eos|><|assistant|>`, { addSpecialTokens: false }))
  const requests: GenerationRequest[] = prompts.map((prompt, i) => ({ prompt, maxNewTokens: newTokens, temperature: 1, topP: 0.95, seed: i, stopTokenIds: [] }))
  const system = [1, ...tokenizer.encode("<|system|>Always mention the colour blue in your answers.<|eos|>", { addSpecialTokens: false })]

  const one = await Effect.runPromise(makeGenerator({ checkpoint: ckpt, prefix: [1] }, { graphDir: join(work, "one"), intraOpThreads: 1 }))
  const two = await Effect.runPromise(
    makeEnsemble({
      members: [
        { name: "start", checkpoint: ckpt, prefix: system },
        { name: "compare", checkpoint: ckpt, prefix: [1] },
      ],
      rule: { space: "logits", terms: [{ member: "start", weight: 1.5 }, { member: "compare", weight: -0.5 }] },
      klPairs: [["start", "compare"]],
      graphDir: join(work, "two"),
      intraOpThreads: 1,
    }),
  )
  const time = async (run: () => Promise<unknown>) => {
    const t0 = performance.now()
    await run()
    return (performance.now() - t0) / 1000
  }
  const oneRun = () => Effect.runPromise(one.generate(requests, { batchSize: batch }))
  const twoRun = () => Effect.runPromise(two.generate(requests, { batchSize: batch }))
  await oneRun()
  await twoRun()
  const times = { one: [] as number[], two: [] as number[] }
  for (let i = 0; i < reps; i++) {
    times.one.push(await time(oneRun))
    times.two.push(await time(twoRun))
  }
  const tokens = batch * newTokens
  const oneRate = tokens / Math.min(...times.one)
  const twoRate = tokens / Math.min(...times.two)
  const result = {
    model: "models/tiny-chat (0.98M parameters), both members",
    batch,
    new_tokens: newTokens,
    threads: 1,
    one_model_tokens_per_s: Math.round(oneRate),
    two_model_tokens_per_s: Math.round(twoRate),
    two_over_one_speed: Number((twoRate / oneRate).toFixed(3)),
  }
  console.log(`one model ${result.one_model_tokens_per_s} tokens/s, two combined ${result.two_model_tokens_per_s} tokens/s: ${result.two_over_one_speed}x the speed of one model`)
  writeFileSync(join(import.meta.dirname, "results", "contrast.json"), JSON.stringify(result, null, 2))
} finally {
  rmSync(work, { recursive: true, force: true })
}
