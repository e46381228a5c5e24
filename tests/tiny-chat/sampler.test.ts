// The tiny-chat evaluation sampler (right-padded batches over src/models/forward.ts's decoder)
// against the independent float64 reference (tests/reference/reference.ts): its greedy choice is
// the reference's argmax, for prompts of different lengths sharing one batch.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { loadCheckpoint, readWeight } from "../../src/models/checkpoint.ts"
import { allWeightRefs } from "../../src/models/forward.ts"
import { tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { makeSampler } from "../../stages/tiny-chat/sampler.ts"
import { referenceLogits } from "../reference/reference.ts"

const ids = [1, 7, 3, 60, 12, 5, 9]

describe("stages/tiny-chat sampler", () => {
  for (const tied of [true, false])
    it(`greedy tokens follow the reference's argmax (tied embeddings: ${tied})`, async () => {
      const dir = fs.mkdtempSync(path.join(tmpdir(), "tiny-chat-sampler-"))
      // std 0.2 so that attention and the MLP do more than pass the residual through
      const config = tinyLlama({ vocabSize: 64, hiddenSize: 16, numHeads: 2, numKvHeads: 2, intermediateSize: 24, tiedEmbeddings: tied })
      await Effect.runPromise(writeRandomCheckpoint(dir, config, { seed: 3, std: 0.2 }))
      const ckpt = await Effect.runPromise(loadCheckpoint(dir))
      const refs = new Map(allWeightRefs(ckpt.weights).map((r) => [r.name, r]))
      const read = (name: string) => Effect.runSync(readWeight(refs.get(name)!))
      const sampler = await Effect.runPromise(makeSampler({ ...ckpt.config, eosTokenIds: [] }, ckpt.weights, read))
      // two prompts of different lengths in one batch: right padding must not change either
      const prompts = [ids.slice(0, 3), ids]
      const [a, b] = await Effect.runPromise(sampler.generate(prompts, { temperature: 0, maxNewTokens: 3, seed: 0, batchSize: 2 }))
      for (const [prompt, out] of [[prompts[0], a], [prompts[1], b]] as const) {
        const seq = [...prompt]
        for (const tok of out) {
          const logits = referenceLogits(dir, seq).at(-1)!
          expect(tok).toBe(logits.indexOf(Math.max(...logits)))
          seq.push(tok)
        }
        expect(out).toHaveLength(3)
      }
    })
})
