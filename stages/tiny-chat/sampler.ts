// Batched sampling from Llama weights for the tiny-chat evaluation: each decode step runs the whole
// (right-padded) batch through the forward graph and reads the logits at each row's last token.
// No KV cache: for a 1M-parameter model and <128-token sequences, recomputing is cheap and keeps
// this a plain use of the decoder. Sampling happens on the host with a seeded generator.
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { Graph, serialize } from "../../src/graph/index.ts"
import type { ModelConfig, ModelWeights } from "../../src/models/checkpoint.ts"
import { allWeightRefs, paramWeights } from "../../src/models/forward.ts"
import { mulberry32 } from "../../src/models/init.ts"
import { type Tensor, toFloat32 } from "../../src/models/safetensors.ts"
import { createSession, runSession, type Session } from "../../src/runtime/session.ts"
import { rightPaddedDecoder } from "./llama-graph.ts"

export interface Sampler {
  /**
   * Continues each prompt until eos or `maxNewTokens`; temperature 0 is greedy. Returns the new
   * tokens of each prompt without the eos. Seeded: same prompts, seed and batch size, same tokens.
   */
  readonly generate: (prompts: ReadonlyArray<ReadonlyArray<number>>, opts: { temperature: number; maxNewTokens: number; seed: number; batchSize: number }) => Effect.Effect<number[][], Error>
}

/** Weights become graph initializers: the session holds them, each step feeds only token ids. */
export const makeSampler = (config: ModelConfig, weights: ModelWeights, read: (name: string) => Tensor, threads = 0): Effect.Effect<Sampler, Error> =>
  Effect.gen(function* () {
    const g = new Graph("llama_last_logits")
    const p: Record<string, ReturnType<Graph["input"]>> = {}
    for (const ref of allWeightRefs(weights))
      p[ref.name] = g.initializer(ref.name, "float32", [...ref.shape], { kind: "inline", data: toFloat32(read(ref.name)) })
    const ids = g.input("ids", "int64", ["B", "T"])
    // flat index b * T + (length_b - 1) of each row's last token
    const last = g.input("last", "int64", ["B"])
    const out = rightPaddedDecoder(g, config, weights, paramWeights(p), ids)
    const hidden = g.reshape(out.hidden, [-1, config.hiddenSize])
    g.outputAs("logits", g.gemm(g.gather(hidden, last, 0), out.lmHead, null, { transB: true }))
    const session: Session = yield* Effect.mapError(createSession(serialize(g), threads > 0 ? { intraOpThreads: threads } : {}), (e) => new Error(e.message))
    const eos = new Set(config.eosTokenIds)
    const pad = config.padTokenId ?? 0
    const vocab = config.vocabSize

    const pick = (logits: Float32Array, row: number, temperature: number, rand: () => number): number => {
      const off = row * vocab
      let best = 0
      for (let i = 1; i < vocab; i++) if (logits[off + i] > logits[off + best]) best = i
      if (temperature === 0) return best
      let total = 0
      const w = new Float64Array(vocab)
      for (let i = 0; i < vocab; i++) total += w[i] = Math.exp((logits[off + i] - logits[off + best]) / temperature)
      let u = rand() * total
      for (let i = 0; i < vocab; i++) if ((u -= w[i]) <= 0) return i
      return best
    }

    const generateBatch = (prompts: ReadonlyArray<ReadonlyArray<number>>, temperature: number, maxNewTokens: number, rand: () => number) =>
      Effect.gen(function* () {
        const seqs = prompts.map((q) => [...q])
        const out: number[][] = prompts.map(() => [])
        let active = prompts.map((_, i) => i)
        for (let t = 0; t < maxNewTokens && active.length > 0; t++) {
          const tooLong = active.find((i) => seqs[i].length >= config.maxPositions)
          if (tooLong !== undefined) return yield* Effect.fail(new Error(`a sequence reached max_position_embeddings ${config.maxPositions}`))
          const width = Math.max(...active.map((i) => seqs[i].length))
          const idData = new BigInt64Array(active.length * width).fill(BigInt(pad))
          const lastData = new BigInt64Array(active.length)
          active.forEach((i, r) => {
            seqs[i].forEach((tok, k) => (idData[r * width + k] = BigInt(tok)))
            lastData[r] = BigInt(r * width + seqs[i].length - 1)
          })
          const res = yield* Effect.mapError(
            runSession(session, { ids: new ort.Tensor("int64", idData, [active.length, width]), last: new ort.Tensor("int64", lastData, [active.length]) }),
            (e) => new Error(e.message),
          )
          const logits = res.logits.data as Float32Array
          const next: number[] = []
          active.forEach((i, r) => {
            const tok = pick(logits, r, temperature, rand)
            if (eos.has(tok)) return
            seqs[i].push(tok)
            out[i].push(tok)
            next.push(i)
          })
          active = next
        }
        return out
      })

    return {
      generate: (prompts, opts) =>
        Effect.gen(function* () {
          const rand = mulberry32(opts.seed)
          const results: number[][] = []
          for (let b = 0; b < prompts.length; b += opts.batchSize)
            results.push(...(yield* generateBatch(prompts.slice(b, b + opts.batchSize), opts.temperature, opts.maxNewTokens, rand)))
          return results
        }),
    }
  })
