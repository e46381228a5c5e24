// Two models of different architectures (a random Llama whose embedding is padded past the
// tokenizer, and a random GPT-NeoX; both with the tiny-chat tokenizer, 1024 tokens) combined in
// one graph, against a float64 reference of the combined distribution built from
// tests/reference/reference.ts logits: greedy and seeded generation, KV-cache decode against full
// recompute, scoring, per-member log-probs / entropies / KL; the tokenizer-identity refusal; one
// checkpoint with and without a LoRA adapter as two members (proxy tuning); one checkpoint with a
// soft prompt, with a text prefix and plain as three members (their virtual positions in the caches).
//
// Tolerance 1e-4 absolute on log-probs, entropies and KL: the graph runs in float32, where a
// 1024-way log-softmax of O(1..10) logits and the sums over the vocabulary are accurate to ~1e-5.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Checkpoint, loadCheckpoint, type ModelConfig } from "../../src/models/checkpoint.ts"
import { type CombinationRule, type Ensemble, type EnsembleMember, type EnsembleStats, ensembleGraphModel, makeEnsemble } from "../../src/models/ensemble.ts"
import { buildStepGraph, type Generation, type GenerationRequest } from "../../src/models/generate.ts"
import { placeWeights } from "../../src/models/graph-weights.ts"
import { tinyGptNeox, tinyLlama, writeRandomCheckpoint } from "../../src/models/init.ts"
import { requestUniform } from "../../src/models/sampling.ts"
import { referenceForward, referenceModel, type ReferenceModel } from "../reference/reference.ts"
import { nonZeroAdapter, tempDir } from "./forward-helpers.ts"
import { logSoftmax, sampledToken } from "./sampling-reference.ts"

const TOL = 1e-4
const V = 1024
const tokenizerDir = path.resolve(import.meta.dirname, "../../models/tiny-chat")
const dirs: string[] = []
const dir = (prefix: string) => {
  const d = tempDir(prefix)
  dirs.push(d)
  return d
}

/** A random checkpoint with the tiny-chat tokenizer files (or `tokenizerJson` instead of its tokenizer.json). */
const checkpoint = (config: ModelConfig, seed: number, tokenizerJson?: string): Promise<Checkpoint> =>
  Effect.runPromise(
    Effect.gen(function* () {
      const d = dir("pipe-ensemble-ckpt-")
      yield* writeRandomCheckpoint(d, config, { seed, std: 0.3 })
      fs.copyFileSync(path.join(tokenizerDir, "tokenizer_config.json"), path.join(d, "tokenizer_config.json"))
      if (tokenizerJson === undefined) fs.copyFileSync(path.join(tokenizerDir, "tokenizer.json"), path.join(d, "tokenizer.json"))
      else fs.writeFileSync(path.join(d, "tokenizer.json"), tokenizerJson)
      return yield* loadCheckpoint(d)
    }),
  )

const small = { hiddenSize: 32, numHeads: 4, numLayers: 2, maxPositions: 48, bosTokenId: 1, eosTokenIds: [2] }
let llama: Checkpoint
let neox: Checkpoint
const refs = new Map<string, ReferenceModel>()

beforeAll(async () => {
  // 1088 rows: 64 padded past the tokenizer, as real checkpoints pad to a multiple of 64
  llama = await checkpoint(tinyLlama({ ...small, vocabSize: V + 64, numKvHeads: 2, intermediateSize: 48 }), 3)
  neox = await checkpoint(tinyGptNeox({ ...small, vocabSize: V }), 4)
  refs.set("llama", referenceModel(llama))
  refs.set("neox", referenceModel(neox))
})
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })))

// ------------------------------------------------------------------ the float64 reference

type Rule = CombinationRule

/** Each member's log-probs (temperature 1, first V logits) and the combined log-probs, in float64. */
const referenceCombined = (rule: Rule, logits: ReadonlyMap<string, readonly number[]>) => {
  const logp = new Map([...logits].map(([n, z]) => [n, logSoftmax(z)]))
  const acc = new Array<number>(V).fill(0)
  if (rule.space === "logits") {
    for (const t of rule.terms) logSoftmax(logits.get(t.member)!.map((z) => z / (t.temperature ?? 1))).forEach((x, i) => (acc[i] += t.weight * x))
    return { logp, combined: logSoftmax(acc) }
  }
  for (const t of rule.terms) logp.get(t.member)!.forEach((x, i) => (acc[i] += t.weight * Math.exp(x)))
  const q = acc.map((x) => Math.max(x, 0) + rule.eps)
  const total = q.reduce((a, b) => a + b, 0)
  return { logp, combined: q.map((x) => Math.log(x / total)) }
}

const entropy = (lp: readonly number[]) => -lp.reduce((s, x) => s + Math.exp(x) * x, 0)
const kl = (a: readonly number[], b: readonly number[]) => a.reduce((s, x, i) => s + Math.exp(x) * (x - b[i]), 0)

/** The reference at the last position of `seq`; `models` maps member names to reference models. */
const referenceAt = (rule: Rule, models: ReadonlyMap<string, ReferenceModel>, seq: readonly number[]) =>
  referenceCombined(rule, new Map([...models].map(([n, m]) => [n, Array.from(referenceForward(m, seq).at(-1)!.subarray(0, V))])))

/** Checks one token's per-member statistics against the reference. */
const expectStats = (stats: EnsembleStats, t: number, logp: ReadonlyMap<string, number[]>, token: number) => {
  for (const [name, lp] of logp) {
    expect(Math.abs(stats.members[name].logProbs[t] - lp[token]), `${name} log-prob`).toBeLessThan(TOL)
    expect(Math.abs(stats.members[name].entropies[t] - entropy(lp)), `${name} entropy`).toBeLessThan(TOL)
  }
  for (const pair of stats.kl) expect(Math.abs(pair.values[t] - kl(logp.get(pair.from)!, logp.get(pair.to)!)), `KL ${pair.from} || ${pair.to}`).toBeLessThan(TOL)
}

// ------------------------------------------------------------------ tests

const rules: Array<[string, Rule]> = [
  // contrastive decoding in logit space, the amateur at temperature 2
  ["logit space", { space: "logits", terms: [{ member: "llama", weight: 1.5 }, { member: "neox", weight: -0.5, temperature: 2 }] }],
  // a negative weight, so max(., 0) clips some tokens to eps
  ["probability space", { space: "probs", terms: [{ member: "llama", weight: 1.5 }, { member: "neox", weight: -0.5 }], eps: 1e-4 }],
]
const prompts = [[1, 5, 9], [1, 200, 33, 7, 41, 812, 8], [1, 60, 3, 3, 17]]
const klPairs: Array<[string, string]> = [["llama", "neox"], ["neox", "llama"]]

const makeWith = (members: EnsembleMember[], rule: Rule, pairs = klPairs, stepsPerRun = 1) =>
  Effect.runPromise(makeEnsemble({ members, rule, klPairs: pairs, graphDir: dir("pipe-ensemble-graph-"), chunk: 4, stepsPerRun }))

/** Same tokens; log-probs and every statistic within TOL. */
const expectSame = (got: Array<Generation & EnsembleStats>, want: Array<Generation & EnsembleStats>) => {
  expect(got.map((g) => g.tokens)).toEqual(want.map((g) => g.tokens))
  got.forEach((g, i) => {
    const h = want[i]
    g.logProbs.forEach((lp, t) => expect(Math.abs(lp - h.logProbs[t])).toBeLessThan(TOL))
    for (const [name, stat] of Object.entries(g.stats)) stat.forEach((x, t) => expect(Math.abs(x - h.stats[name][t]), name).toBeLessThan(TOL))
    expect(Object.keys(g.stats).sort()).toEqual(Object.keys(h.stats).sort())
  })
}

for (const [ruleName, rule] of rules)
  describe(`a Llama and a GPT-NeoX combined in ${ruleName}`, () => {
    let ens: Ensemble
    beforeAll(async () => {
      ens = await makeWith([{ name: "llama", checkpoint: llama }, { name: "neox", checkpoint: neox }], rule)
    })

    it("greedy decoding follows the reference argmax, with combined and per-member statistics", async () => {
      const out = await Effect.runPromise(ens.generate(prompts.map((prompt) => ({ prompt, maxNewTokens: 6, temperature: 0, stopTokenIds: [] }))))
      out.forEach((g, i) => {
        expect(g.tokens).toHaveLength(6)
        const seq = [...prompts[i]]
        g.tokens.forEach((tok, t) => {
          const { logp, combined } = referenceAt(rule, refs, seq)
          // the argmax up to float32 rounding (a near-tie may go either way)
          expect(Math.max(...combined) - combined[tok]).toBeLessThan(TOL)
          expect(tok).toBeLessThan(V)
          expect(Math.abs(g.logProbs[t] - combined[tok])).toBeLessThan(TOL)
          expectStats(g, t, logp, tok)
          seq.push(tok)
        })
      })
    })

    const sampling = (seed: number, prompt: number[]): GenerationRequest => ({ prompt, maxNewTokens: 8, temperature: 0.9, topK: 40, topP: 0.95, seed, stopTokenIds: [] })
    const sampled = prompts.flatMap((p, i) => [sampling(10 + i, p), sampling(20 + i, p)])

    it("seeded sampling picks the reference's inverse-CDF token from the combined distribution", async () => {
      const out = await Effect.runPromise(ens.generate(sampled))
      let checked = 0
      out.forEach((g, i) => {
        const r = sampled[i]
        const seq = [...r.prompt]
        for (const [t, tok] of g.tokens.entries()) {
          const { combined } = referenceAt(rule, refs, seq)
          const want = sampledToken(combined, r.temperature!, r.topK!, r.topP!, requestUniform(r.seed!, t))
          // within float32 rounding of a cumulative-mass boundary either neighbour is right, and the rest of the row differs legitimately
          if (want.margin < 1e-5) break
          expect(tok).toBe(want.token)
          expect(Math.abs(g.logProbs[t] - combined[tok])).toBeLessThan(TOL)
          checked++
          seq.push(tok)
        }
      })
      expect(checked).toBeGreaterThanOrEqual(0.9 * sampled.length * 8)
      // the seeds matter: not every row of one prompt is the same continuation
      expect(new Set(out.map((g) => g.tokens.join())).size).toBeGreaterThan(prompts.length)
    })

    it("KV-cache decode with per-member caches equals full recompute and the decode-loop graph (batched, left-padded)", async () => {
      const requests = [...prompts.map((prompt) => ({ prompt, maxNewTokens: 8, temperature: 0, stopTokenIds: [] })), ...sampled]
      const cached = await Effect.runPromise(ens.generate(requests, { batchSize: 5 }))
      expectSame(cached, await Effect.runPromise(ens.generate(requests, { batchSize: 5, cache: false })))
      const looped = await makeWith([{ name: "llama", checkpoint: llama }, { name: "neox", checkpoint: neox }], rule, klPairs, 3)
      expectSame(await Effect.runPromise(looped.generate(requests, { batchSize: 5 })), cached)
      // 2 members x (log-prob, entropy) + 2 KL pairs, one value per token
      expect(Object.keys(cached[0].stats)).toHaveLength(6)
      expect(cached[0].stats["kl.llama.neox"]).toHaveLength(8)
    })

    it("scores continuations under the combined distribution, with per-member statistics", async () => {
      const requests = [
        { context: [1, 5, 9], continuation: [44, 300, 2] },
        { context: [1, 200, 33, 7, 41], continuation: [812, 8, 8, 1000, 17, 3] },
      ]
      const scores = await Effect.runPromise(ens.score(requests))
      scores.forEach((s, i) => {
        const { context, continuation } = requests[i]
        expect(s.logProbs).toHaveLength(continuation.length)
        continuation.forEach((tok, t) => {
          const { logp, combined } = referenceAt(rule, refs, [...context, ...continuation.slice(0, t)])
          expect(Math.abs(s.logProbs[t] - combined[tok])).toBeLessThan(TOL)
          expect(Math.abs(s.entropies[t] - entropy(combined))).toBeLessThan(TOL)
          expectStats(s, t, logp, tok)
        })
        expect(Math.abs(s.sum - s.logProbs.reduce((a, b) => a + b, 0))).toBeLessThan(1e-9)
      })
    })
  })

describe("one checkpoint with and without a LoRA adapter as two members", () => {
  it("proxy tuning: large + (small tuned - small base), against the merged checkpoint; the shared checkpoint's weights are read once", async () => {
    const { adapter, merged } = await nonZeroAdapter(llama)

    const members: EnsembleMember[] = [
      { name: "large", checkpoint: neox },
      { name: "tuned", checkpoint: llama, loras: [{ name: "adapter", adapter }] },
      { name: "base", checkpoint: llama },
    ]
    const rule: Rule = { space: "logits", terms: [{ member: "large", weight: 1 }, { member: "tuned", weight: 1 }, { member: "base", weight: -1 }] }
    const ens = await makeWith(members, rule, [["tuned", "base"]])
    const models = new Map([["large", refs.get("neox")!], ["tuned", referenceModel(merged)], ["base", refs.get("llama")!]])
    const [g] = await Effect.runPromise(ens.generate([{ prompt: prompts[1], maxNewTokens: 6, temperature: 0, stopTokenIds: [] }]))
    const seq = [...prompts[1]]
    g.tokens.forEach((tok, t) => {
      const { logp, combined } = referenceAt(rule, models, seq)
      expect(Math.max(...combined) - combined[tok]).toBeLessThan(TOL)
      expect(Math.abs(g.logProbs[t] - combined[tok])).toBeLessThan(TOL)
      expectStats(g, t, logp, tok)
      seq.push(tok)
    })
    // the adapter changes the model: the tuned and base members disagree
    expect(Math.max(...g.kl[0].values)).toBeGreaterThan(1e-3)

    const placement = await Effect.runPromise(placeWeights([neox, llama], dir("pipe-ensemble-graph-")))
    const graph = buildStepGraph(ensembleGraphModel({ members, rule }, placement, V))
    const prefixes = new Set(graph.initializers.map((i) => i.value.name.split(".")[0]))
    // neox's weights (w0), llama's once (w1), the adapter's matrices under its member name
    expect([...prefixes].sort()).toEqual(["tuned", "w0", "w1"])
  })
})

describe("members with soft prompts and a text prefix", () => {
  it("one checkpoint soft-prompted, prefixed and plain: generation (cache = recompute = decode loop) and scoring equal the reference", async () => {
    const H = llama.config.hiddenSize
    const soft = Float64Array.from({ length: 2 * H }, (_, i) => Math.sin(i * 0.7) * 0.5)
    const prefix = [1, 77, 300]
    const members: EnsembleMember[] = [
      { name: "soft", checkpoint: llama, softPrompt: { k: 2, values: Float32Array.from(soft) } },
      { name: "sys", checkpoint: llama, prefix },
      { name: "base", checkpoint: neox },
    ]
    const rule: Rule = { space: "logits", terms: [{ member: "soft", weight: 1 }, { member: "sys", weight: 0.5 }, { member: "base", weight: -0.5 }] }
    // each member's reference input: its virtual block, then the shared tokens
    const inputs = new Map<string, (seq: readonly number[]) => Array<number | Float64Array>>([
      ["soft", (seq) => [soft.subarray(0, H), soft.subarray(H), ...seq]],
      ["sys", (seq) => [...prefix, ...seq]],
      ["base", (seq) => [...seq]],
    ])
    const models = new Map([["soft", refs.get("llama")!], ["sys", refs.get("llama")!], ["base", refs.get("neox")!]])
    const at = (seq: readonly number[]) =>
      referenceCombined(rule, new Map([...models].map(([n, m]) => [n, Array.from(referenceForward(m, inputs.get(n)!(seq)).at(-1)!.subarray(0, V))])))
    const pairs: Array<[string, string]> = [["soft", "sys"]]
    const ens = await makeWith(members, rule, pairs)
    const requests = prompts.map((prompt) => ({ prompt, maxNewTokens: 6, temperature: 0, stopTokenIds: [] }))
    const cached = await Effect.runPromise(ens.generate(requests))
    cached.forEach((g, i) => {
      const seq = [...prompts[i]]
      g.tokens.forEach((tok, t) => {
        const { logp, combined } = at(seq)
        expect(Math.max(...combined) - combined[tok]).toBeLessThan(TOL)
        expect(Math.abs(g.logProbs[t] - combined[tok])).toBeLessThan(TOL)
        expectStats(g, t, logp, tok)
        seq.push(tok)
      })
    })
    expectSame(await Effect.runPromise(ens.generate(requests, { cache: false })), cached)
    expectSame(await Effect.runPromise((await makeWith(members, rule, pairs, 3)).generate(requests)), cached)
    const [score] = await Effect.runPromise(ens.score([{ context: [1, 200, 33], continuation: [7, 41, 812] }]))
    ;[7, 41, 812].forEach((tok, t) => {
      const { logp, combined } = at([1, 200, 33, 7, 41, 812].slice(0, 3 + t))
      expect(Math.abs(score.logProbs[t] - combined[tok])).toBeLessThan(TOL)
      expectStats(score, t, logp, tok)
    })
  })
})

describe("refusals", () => {
  const pair = (other: Checkpoint) => [{ name: "llama", checkpoint: llama }, { name: "other", checkpoint: other }]
  const rule: Rule = { space: "logits", terms: [{ member: "llama", weight: 1 }, { member: "other", weight: 1 }] }
  const failure = async (members: EnsembleMember[], r: Rule = rule) => {
    const exit = await Effect.runPromiseExit(makeEnsemble({ members, rule: r, graphDir: dir("pipe-ensemble-graph-") }))
    expect(Exit.isFailure(exit)).toBe(true)
    return String(exit)
  }

  it("a different tokenizer.json of the same size, naming both models", async () => {
    // two vocabulary entries swapped: same size, same tokens, different ids
    const json = JSON.parse(fs.readFileSync(path.join(tokenizerDir, "tokenizer.json"), "utf8")) as { model: { vocab: Record<string, number> } }
    const [a, b] = Object.keys(json.model.vocab).slice(100, 102)
    ;[json.model.vocab[a], json.model.vocab[b]] = [json.model.vocab[b], json.model.vocab[a]]
    const other = await checkpoint(tinyLlama({ ...small, vocabSize: V }), 5, JSON.stringify(json))
    const message = await failure(pair(other))
    expect(message).toContain(`models "llama" (${llama.dir}) and "other" (${other.dir}) have different tokenizers`)
  })

  it("a member with a conditional soft prompt; a member whose soft prompt does not fit its model", async () => {
    const conditional = { k: 1, conditionSize: 2, hidden: 2, weights: { w1: new Float32Array(4), b1: new Float32Array(2), w2: new Float32Array(64), b2: new Float32Array(32) } }
    expect(await failure([{ name: "llama", checkpoint: llama, conditionalSoftPrompt: conditional }, { name: "other", checkpoint: neox }])).toContain(
      'member "llama" has a conditional soft prompt, which ensembles do not support',
    )
    expect(await failure([{ name: "llama", checkpoint: llama, softPrompt: { k: 2, values: new Float32Array(3) } }, { name: "other", checkpoint: neox }])).toContain(
      `member "llama": variant of ${llama.dir}: soft prompt has 3 values, expected k x hidden size = 2 x 32`,
    )
  })

  it("a checkpoint with fewer embedding rows than the tokenizer has tokens", async () => {
    const other = await checkpoint(tinyLlama({ ...small, vocabSize: 1000 }), 6)
    expect(await failure(pair(other))).toContain(`model "other" (${other.dir}) has 1000 embedding rows, fewer than the 1024 tokens`)
  })

  it("a checkpoint without tokenizer files", async () => {
    const d = dir("pipe-ensemble-ckpt-")
    await Effect.runPromise(writeRandomCheckpoint(d, tinyLlama({ ...small, vocabSize: V }), { seed: 8 }))
    const other = await Effect.runPromise(loadCheckpoint(d))
    expect(await failure(pair(other))).toContain(`model "other" (${other.dir}) has no tokenizer.json and tokenizer_config.json`)
  })

  it("rules naming unknown members, bad weights, and members nothing uses", async () => {
    const members = pair(neox)
    expect(await failure(members, { space: "logits", terms: [{ member: "llama", weight: 1 }, { member: "nobody", weight: 1 }] })).toContain('no member named "nobody"')
    expect(await failure(members, { space: "logits", terms: [{ member: "llama", weight: 1 }, { member: "other", weight: 1, temperature: 0 }] })).toContain("temperature must be a finite number > 0")
    expect(await failure(members, { space: "probs", terms: [{ member: "llama", weight: 1 }, { member: "other", weight: -1 }], eps: 0 })).toContain("weights must sum to more than 0")
    expect(await failure(members, { space: "logits", terms: [{ member: "llama", weight: 1 }] })).toContain('member "other" is used by neither')
    const exit = await Effect.runPromiseExit(makeEnsemble({ members, rule, klPairs: [["llama", "other"], ["llama", "other"]], graphDir: dir("pipe-ensemble-graph-") }))
    expect(String(exit)).toContain("KL pair [llama, other] is given twice")
  })
})
