// Cost of blended generation (seed 003, issue 18): tokens/s sampling from the blend
// big/T_b + (tuned/T_t − untuned/T_u) — three models in one ensemble graph, one KV cache each,
// combination and sampling in-graph — against the big model alone (generate.ts), same prompts,
// same settings, rounds alternated so both sides see the same load.
// Models: the tiny family when models/tiny-base-l, tiny-base-s and tiny-chat-s exist (big, tuned,
// untuned = base-l, chat-s, base-s); otherwise models/tiny-chat as the big model and two random
// Llamas of half its width with its tokenizer (stated in the result).
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { blendRule } from "../src/models/blend.ts"
import { type Checkpoint, loadCheckpoint } from "../src/models/checkpoint.ts"
import { scopedEnsemble } from "../src/models/ensemble.ts"
import { type GenerationRequest, makeGenerator } from "../src/models/generate.ts"
import { tinyLlama, writeRandomCheckpoint } from "../src/models/init.ts"
import { scopedSessions } from "../src/runtime/session.ts"

const repo = path.resolve(import.meta.dirname, "..")
const work = fs.mkdtempSync(path.join(tmpdir(), "pipe-bench-blend-"))
const family = ["tiny-base-l", "tiny-chat-s", "tiny-base-s"].map((m) => path.join(repo, "models", m))

const smallLike = (big: Checkpoint, seed: number) =>
  Effect.gen(function* () {
    const dir = path.join(work, `small-${seed}`)
    const c = big.config
    yield* writeRandomCheckpoint(dir, tinyLlama({ hiddenSize: c.hiddenSize / 2, numHeads: 4, numKvHeads: 4, numLayers: 2, intermediateSize: c.hiddenSize * 1.5, maxPositions: c.maxPositions, vocabSize: c.vocabSize, bosTokenId: 1, eosTokenIds: [2] }), { seed, std: 0.05 })
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(repo, "models/tiny-chat", f), path.join(dir, f))
    return yield* loadCheckpoint(dir)
  })

const program = Effect.gen(function* () {
  const useFamily = family.every((d) => fs.existsSync(path.join(d, "config.json")))
  const [big, tuned, untuned] = useFamily
    ? yield* Effect.forEach(family, loadCheckpoint)
    : yield* Effect.gen(function* () {
        const b = yield* loadCheckpoint(path.join(repo, "models/tiny-chat"))
        return [b, yield* smallLike(b, 1), yield* smallLike(b, 2)]
      })
  const members = [
    { name: "big", checkpoint: big },
    { name: "tuned", checkpoint: tuned },
    { name: "untuned", checkpoint: untuned },
  ]
  // no stop token: every request decodes exactly maxNewTokens
  const requests: GenerationRequest[] = Array.from({ length: 8 }, (_, i) => ({ prompt: [1, 10 + i, 20 + i, 30 + i], maxNewTokens: 64, temperature: 0.8, topP: 0.95, seed: i, stopTokenIds: [] }))
  const tokens = requests.length * 64
  const blend = yield* scopedEnsemble({ members, rule: blendRule("blend", { T_b: 1, T_t: 1.5, T_u: 2 }), graphDir: path.join(work, "blend"), stepsPerRun: 8 })
  const alone = yield* scopedSessions(makeGenerator(big, { graphDir: path.join(work, "big"), stepsPerRun: 8 }))
  const time = (run: Effect.Effect<unknown, unknown>) =>
    Effect.gen(function* () {
      const t = performance.now()
      yield* run
      return tokens / ((performance.now() - t) / 1000)
    })
  // one warm-up each, then alternated rounds
  yield* blend.generate(requests)
  yield* alone.generate(requests)
  const rates = { blend: [] as number[], big: [] as number[] }
  for (let round = 0; round < 5; round++) {
    rates.blend.push(yield* time(blend.generate(requests)))
    rates.big.push(yield* time(alone.generate(requests)))
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  const result = {
    models: useFamily ? "tiny family: big tiny-base-l, tuned tiny-chat-s, untuned tiny-base-s" : "big models/tiny-chat; tuned and untuned random Llamas of half its width (the family was not found)",
    batch: requests.length,
    newTokensPerRequest: 64,
    blendTokensPerS: median(rates.blend),
    bigTokensPerS: median(rates.big),
    ratio: median(rates.blend) / median(rates.big),
  }
  console.log(`blended generation ${result.blendTokensPerS.toFixed(0)} tokens/s, big model alone ${result.bigTokensPerS.toFixed(0)} tokens/s: ratio ${result.ratio.toFixed(2)} (${result.models})`)
  fs.mkdirSync(path.join(import.meta.dirname, "results"), { recursive: true })
  fs.writeFileSync(path.join(import.meta.dirname, "results", "blend.json"), JSON.stringify(result, null, 2))
}).pipe(Effect.scoped, Effect.ensuring(Effect.sync(() => fs.rmSync(work, { recursive: true, force: true }))))

await Effect.runPromise(program)
