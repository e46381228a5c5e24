// score-members and blend-search on three random Llamas (tests/blend/fixture.ts):
// - stored member log-probs, and the blended and proxy-tuned log-probs computed from them, against a
//   float64 reference built from tests/reference/reference.ts logits (full vocabulary and top-5);
// - float16 storage moves a perplexity by well under 1%;
// - the search resumes after a kill to exactly the uninterrupted search's trials;
// - members with different tokenizers are refused, naming both.
//
// Tolerances: 1e-4 absolute on log-probs. The graph runs in float32 (a 1024-way log-softmax of
// O(1..10) logits is accurate to ~1e-5) and the host rule runs in float64 on those float32 rows; the
// rule multiplies member log-probs by at most 1 / 0.5 = 2, so ~2e-5 at worst.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { blendRule, ruleLogProbs } from "../../src/models/blend.ts"
import type { LogitTerm } from "../../src/models/ensemble.ts"
import { perplexity } from "../../src/models/scoring.ts"
import { readMemberLogProbs, type StoredMemberRows, writeMemberLogProbs } from "../../stages/blend/artifacts.ts"
import { blendSearch, rulePerplexity } from "../../stages/blend/blend-search.ts"
import { openMembers } from "../../stages/blend/members.ts"
import { scoreMemberRows, scoringMemoryProblem } from "../../stages/blend/score-members.ts"
import { encode, fromNumbers, type Tensor } from "../../src/core/safetensors.ts"
import { logSoftmax } from "../models/sampling-reference.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { inputRef, stageContext, tensorsValue } from "../stage-harness.ts"
import { type BlendFixture, blendFixture, randomCheckpoint, referenceLogProbs, sequences, V } from "./fixture.ts"

const TOL = 1e-4
let fx: BlendFixture
let rows: StoredMemberRows
/** `r` as score-members publishes it: streamed to a MemberLogProbs file. */
const stored = (r: StoredMemberRows, dtype: "F16" | "F32") => Effect.runPromise(writeMemberLogProbs(path.join(tempDir("pipe-blend-rows-"), "rows.safetensors"), r, dtype))
const seqs = sequences([9, 14, 5, 20], 1)
// ref[member][seq][position] = float64 log-softmax
let ref: Map<string, number[][][]>
const scoreOptions = { graphDir: tempDir("pipe-blend-graph-"), device: { kind: "cpu" }, batchSize: 3 } as const

beforeAll(async () => {
  fx = await blendFixture()
  rows = await Effect.runPromise(scoreMemberRows(fx.members, V, { ids: seqs, scoredFrom: seqs.map(() => 1) }, scoreOptions))
  ref = new Map(fx.members.map((m) => [m.name, seqs.map((s) => referenceLogProbs(fx.refs.get(m.name)!, s))]))
}, 60_000)
afterAll(() => fx.cleanup())

/** (sequence, position) of each stored row, in order. */
const positions = () => seqs.flatMap((s, i) => s.slice(1).map((_, t) => [i, t] as const))

/** The k largest entries kept, the rest of the mass spread evenly (written independently of blend.ts: by sorting). */
const refTopK = (lp: readonly number[], k: number) => {
  const order = lp.map((x, i) => [x, i] as const).sort((a, b) => b[0] - a[0])
  const keep = new Set(order.slice(0, k).map(([, i]) => i))
  const tail = Math.max(1e-9, 1 - order.slice(0, k).reduce((s, [x]) => s + Math.exp(x), 0))
  return lp.map((x, i) => (keep.has(i) ? x : Math.log(tail / (lp.length - k))))
}

/** log p_rule(target) in float64 from the reference's member rows. */
const refRule = (terms: ReadonlyArray<LogitTerm>, member: (name: string) => number[], target: number) => {
  const acc = new Array<number>(V).fill(0)
  for (const t of terms) logSoftmax(member(t.member).map((x) => x / (t.temperature ?? 1))).forEach((x, i) => (acc[i] += t.weight * x))
  return logSoftmax(acc)[target]
}

describe("score-members", () => {
  it("stores each member's full log-softmax at every position, in text order, against the float64 reference", () => {
    expect(rows.rows).toBe(seqs.reduce((n, s) => n + s.length - 1, 0))
    positions().forEach(([i, t], r) => {
      expect(rows.targets[r]).toBe(seqs[i][t + 1])
      expect(rows.tokensBack[r]).toBe(t)
      for (const m of rows.members) {
        const got = rows.logProbs.get(m)!.subarray(r * V, (r + 1) * V)
        const want = ref.get(m)![i][t]
        let worst = 0
        for (let v = 0; v < V; v++) worst = Math.max(worst, Math.abs(got[v] - want[v]))
        expect(worst, `${m} row ${r}`).toBeLessThan(TOL)
      }
    })
  })

  it("stores only the scored targets (a chat's answer): exactly the rows from each sequence's scoredFrom on", async () => {
    // as if answers started at token 6 of the 9-token text, 3 of 14 and 4 of 5 (its last), the 20-token text a plain one
    const scoredFrom = [6, 3, 4, 1]
    const part = await Effect.runPromise(scoreMemberRows(fx.members, V, { ids: seqs, scoredFrom }, scoreOptions))
    // the rows of the whole texts at (sequence i, target j >= scoredFrom[i]), in the same order
    const kept = positions()
      .map(([i, t], r) => [i, t + 1, r] as const)
      .filter(([i, j]) => j >= scoredFrom[i])
    expect(kept.map(([i, j]) => `${i}:${j}`)).toEqual(["0:6", "0:7", "0:8", ...Array.from({ length: 11 }, (_, k) => `1:${k + 3}`), "2:4", ...Array.from({ length: 19 }, (_, k) => `3:${k + 1}`)])
    expect(part.rows).toBe(kept.length)
    kept.forEach(([i, j, r], p) => {
      expect(part.targets[p]).toBe(seqs[i][j])
      expect(part.tokensBack[p]).toBe(j - 1)
      for (const m of part.members) expect(Array.from(part.logProbs.get(m)!.subarray(p * V, (p + 1) * V))).toEqual(Array.from(rows.logProbs.get(m)!.subarray(r * V, (r + 1) * V)))
    })
  })
})

describe("the blend and proxy rules on stored rows", () => {
  const cases: Array<[string, ReturnType<typeof blendRule>]> = [
    ["blend", blendRule("blend", { T_b: 0.7, T_t: 1.3, T_u: 2.5 })],
    ["proxy", blendRule("proxy", { alpha: 0.8 })],
  ]
  for (const [name, rule] of cases)
    for (const topK of [undefined, 5])
      it(`${name}${topK ? ` (top ${topK})` : ""}: log p(target) equals the float64 reference`, () => {
        const got = ruleLogProbs(rule, rows, topK === undefined ? {} : { topK })
        positions().forEach(([i, t], r) => {
          const member = (m: string) => (topK === undefined ? ref.get(m)![i][t] : refTopK(ref.get(m)![i][t], topK))
          expect(Math.abs(got[r] - refRule(rule.terms, member, rows.targets[r])), `row ${r}`).toBeLessThan(TOL)
        })
      })

  it("top-5 loses information: its perplexity differs from the full-vocabulary one", () => {
    const full = rulePerplexity(rows, "blend", { T_b: 1, T_t: 1, T_u: 1 }, 0)
    expect(Math.abs(rulePerplexity(rows, "blend", { T_b: 1, T_t: 1, T_u: 1 }, 5) / full - 1)).toBeGreaterThan(0.01)
  })

  it("float16 storage moves the blend's perplexity by under 0.5%", async () => {
    const half = await Effect.runPromise(readMemberLogProbs(await tensorsValue(await stored(rows, "F16"))))
    expect(half.logProbs.get("big")![0]).not.toBe(rows.logProbs.get("big")![0])
    for (const params of [{ T_b: 0.5, T_t: 2, T_u: 1 }, { T_b: 1, T_t: 1, T_u: 1 }]) {
      const full = rulePerplexity(rows, "blend", params, 0)
      expect(Math.abs(rulePerplexity(half, "blend", params, 0) / full - 1)).toBeLessThan(0.005)
    }
  })
})

describe("score-members' output and memory check", () => {
  it("streams the rows a slice at a time to the bytes of encoding them whole (so cache keys held)", async () => {
    // a vocabulary of 2^20 + 3 makes slices of 3 rows: 9 rows are three slices per member
    const vocab = 2 ** 20 + 3
    const big: StoredMemberRows = {
      members: ["a", "b"],
      rows: 9,
      vocab,
      logProbs: new Map(["a", "b"].map((m, k) => [m, Float32Array.from({ length: 9 * vocab }, (_, i) => -((i * 7919 + k) % 1000) / 97)])),
      targets: Int32Array.from({ length: 9 }, (_, i) => i * 3),
      tokensBack: Int32Array.from({ length: 9 }, (_, i) => i),
    }
    for (const dtype of ["F16", "F32"] as const) {
      const file = (await stored(big, dtype)) as { path: string }
      const whole = Effect.runSync(
        encode(
          new Map([...big.members.map((m): [string, Tensor] => [`${m}.logprobs`, fromNumbers(big.logProbs.get(m)!, dtype, [9, vocab])]), ["targets", fromNumbers(big.targets, "I32", [9])], ["tokens_back", fromNumbers(big.tokensBack, "I32", [9])]]),
          { members: "a,b", rows: "9", vocab: String(vocab) },
        ),
      )
      expect(Buffer.compare(fs.readFileSync(file.path), Buffer.from(whole)), dtype).toBe(0)
    }
  })

  it("refuses, before any forward pass, a split whose rows would not fit in memory, saying what to lower", () => {
    // Llama 3's vocabulary, 32768 scored positions, three members, on a 24 GiB machine: 50 GB of float32 rows
    expect(scoringMemoryProblem("validation", 32768, 128256, 3, "float16", 24 * 2 ** 30)).toBe(
      "validation: 32768 scored positions x 128256 tokens x 3 members need 47.0 GiB of memory (here, then in blend-search and evaluate-blend; 23.5 GiB in the cache as float16), more than 80% of this machine's 24.0 GiB: score fewer positions with held-out.limit (texts) or held-out.maxTokens (tokens per text)",
    )
    expect(scoringMemoryProblem("validation", 2048, 128256, 3, "float16", 24 * 2 ** 30)).toBeUndefined()
  })
})

describe("blend-search", () => {
  const params = { kind: "blend", topK: 0, trials: 14, startup: 5, seed: 3, temperatureLow: 0.5, temperatureHigh: 4, alphaLow: 0, alphaHigh: 2 } as const
  const run = async (workDir: string, stopAt?: number) => {
    const validation = await tensorsValue(await stored(rows, "F32"))
    return Effect.runPromiseExit(blendSearch.spec.run({ params, inputs: { validation }, ctx: stageContext(workDir, stopAt === undefined ? {} : { stopAt }) }) as Effect.Effect<any, any>)
  }

  it("records every trial, returns the best, and resumes after a kill to the uninterrupted search's trials", async () => {
    const whole = await run(tempDir("pipe-blend-search-"))
    expect(Exit.isSuccess(whole)).toBe(true)
    if (!Exit.isSuccess(whole)) return
    const out = whole.value
    expect(out.trials).toHaveLength(14)
    expect(out.best.perplexity).toBe(Math.min(...out.trials.map((t: { perplexity: number }) => t.perplexity)))
    // each trial's perplexity is the rule's on the validation rows
    const t5 = out.trials[5]
    expect(t5.perplexity).toBeCloseTo(perplexity(Array.from(ruleLogProbs(blendRule("blend", t5.params), rows))), 10)
    // members alone: their mean target log-prob
    const big = rows.logProbs.get("big")!
    expect(out.members.big).toBeCloseTo(perplexity(Array.from(rows.targets, (tok, r) => big[r * V + tok])), 10)

    const dir = tempDir("pipe-blend-search-")
    const killed = await run(dir, 8)
    expect(Exit.isFailure(killed)).toBe(true)
    expect(fs.readFileSync(path.join(dir, "trials.jsonl"), "utf8").trim().split("\n")).toHaveLength(8)
    // a torn last line (killed mid-write) is dropped, not fatal
    fs.appendFileSync(path.join(dir, "trials.jsonl"), '{"params":{"T_b":0.')
    const resumed = await run(dir)
    expect(Exit.isSuccess(resumed) && resumed.value).toEqual(out)
  })

  it("refuses an empty search space", async () => {
    const validation = await tensorsValue(await stored(rows, "F32"))
    const exit = await Effect.runPromiseExit(
      blendSearch.spec.run({ params: { ...params, temperatureLow: 2, temperatureHigh: 1 }, inputs: { validation }, ctx: stageContext(tempDir("pipe-blend-search-")) }) as Effect.Effect<any, any>,
    )
    expect(String(Exit.isFailure(exit) && exit.cause)).toMatch(/T_b: needs finite low < high/)
  })
})

describe("members", () => {
  it("with different tokenizers are refused, naming both models", async () => {
    const other = JSON.parse(fs.readFileSync(path.join(fx.dirs.big, "tokenizer.json"), "utf8"))
    other.added_tokens = [...(other.added_tokens ?? []), { id: V - 1, content: "<extra>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }]
    const dir = path.join(fx.root, "foreign")
    fs.mkdirSync(dir)
    await randomCheckpoint(dir, fx.members[1].checkpoint.config, 9, JSON.stringify(other))
    const exit = await Effect.runPromiseExit(openMembers({ big: inputRef(fx.dirs.big), tuned: inputRef(dir), untuned: inputRef(fx.dirs.untuned) }, tempDir("pipe-blend-members-")))
    const message = String(Exit.isFailure(exit) && exit.cause)
    expect(message).toMatch(/different tokenizers/)
    expect(message).toContain(fx.dirs.big)
    expect(message).toContain(dir)
  })
})
