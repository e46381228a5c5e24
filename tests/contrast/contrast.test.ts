// Contrastive decoding (stages/contrast/contrast.ts) on two random Llamas sharing the tiny-chat
// tokenizer, against a float64 reference (tests/reference/reference.ts) of each model's
// distribution along the generated text: the combined distribution's greedy token, per-token
// KL(P_s || P_c), each model's log-probs and perplexity, each model's top tokens; the
// probability-space rule's clamp; the summary statistics on a hand-computed case.
//
// Tolerance 1e-4 absolute on log-probs and KL, as tests/models/ensemble.test.ts: the graphs run in
// float32, where a 1024-way log-softmax of O(1..10) logits is accurate to ~1e-5.
import { Effect } from "effect"
import * as fs from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Checkpoint } from "../../src/models/checkpoint.ts"
import { loadTokenizer, type TextTokenizer } from "../../src/text/tokenizer.ts"
import type { ContrastText } from "../../stages/contrast/artifacts.ts"
import { type ContrastSetup, openContrast, sharedPromptIds, summarize } from "../../stages/contrast/contrast.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { logSoftmax } from "../models/sampling-reference.ts"
import { referenceForward, referenceModel, type ReferenceModel } from "../reference/reference.ts"
import { randomChatCheckpoint, tinyChatDir } from "./helpers.ts"

const TOL = 1e-4
const V = 1024
let a: Checkpoint
let b: Checkpoint
let refA: ReferenceModel
let refB: ReferenceModel
let tokenizer: TextTokenizer
const dirs: string[] = []

beforeAll(async () => {
  a = await randomChatCheckpoint(11)
  b = await randomChatCheckpoint(12)
  dirs.push(a.dir, b.dir)
  refA = referenceModel(a)
  refB = referenceModel(b)
  tokenizer = await Effect.runPromise(loadTokenizer(tinyChatDir))
})
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })))

const setup = (over: Partial<ContrastSetup>): ContrastSetup => {
  const graphDir = tempDir("pipe-contrast-graphs-")
  dirs.push(graphDir)
  return {
    start: { dir: a.dir, prefix: "<|system|>Be brief.<|eos|>", weight: 1 },
    compare: { dir: b.dir, prefix: "", weight: -1 },
    space: "logits",
    eps: 1e-6,
    topTokens: 3,
    graphDir,
    device: { kind: "cpu" },
    threads: 1,
    ...over,
  }
}

const decode = (s: ContrastSetup, prompts: string[], sampling: { temperature: number; topP: number; format?: "text" | "chat" }) =>
  Effect.runPromise(
    Effect.scoped(
      Effect.flatMap(openContrast(s), (c) =>
        c.decode(
          prompts.map((prompt, i) => ({ prompt, promptIndex: i, sample: 0, seed: 100 + i })),
          { temperature: sampling.temperature, topP: sampling.topP, topK: 0, maxNewTokens: 10, format: sampling.format ?? "text", batchSize: 2 },
        ),
      ),
    ),
  )

const kl = (p: readonly number[], q: readonly number[]) => p.reduce((s, x, i) => s + Math.exp(x) * (x - q[i]), 0)

/** Both models' float64 log-probs before each generated token of `t`. */
const referenceAlong = (s: ContrastSetup, t: ContrastText, format: "text" | "chat") => {
  const shared = Effect.runSync(sharedPromptIds(tokenizer, t.prompt, format))
  const seqOf = (prefix: string) => [1, ...tokenizer.encode(prefix, { addSpecialTokens: false }), ...shared]
  const start = seqOf(s.start.prefix)
  const compare = seqOf(s.compare.prefix)
  return t.tokens.map((tok, i) => {
    const lpS = logSoftmax(Array.from(referenceForward(refA, [...start, ...t.tokens.slice(0, i)]).at(-1)!.subarray(0, V)))
    const lpC = logSoftmax(Array.from(referenceForward(refB, [...compare, ...t.tokens.slice(0, i)]).at(-1)!.subarray(0, V)))
    return { lpS, lpC, tok }
  })
}

const expectMatchesReference = (s: ContrastSetup, texts: ContrastText[], format: "text" | "chat", combined: (lpS: number[], lpC: number[]) => number[]) => {
  for (const t of texts) {
    expect(t.tokens.length).toBeGreaterThan(0)
    expect(t.pieces.join("")).toBe(tokenizer.decode(t.tokens))
    referenceAlong(s, t, format).forEach(({ lpS, lpC, tok }, i) => {
      const c = combined(lpS, lpC)
      // greedy: the combined distribution's argmax, up to float32 rounding of a near-tie
      expect(Math.max(...c) - c[tok]).toBeLessThan(TOL)
      expect(Math.abs(t.kl[i] - kl(lpS, lpC)), `KL at token ${i}`).toBeLessThan(TOL)
      expect(Math.abs(t.logProbs.start[i] - lpS[tok])).toBeLessThan(TOL)
      expect(Math.abs(t.logProbs.compare[i] - lpC[tok])).toBeLessThan(TOL)
      const top = [...lpS.keys()].sort((x, y) => lpS[y] - lpS[x]).slice(0, 3)
      t.top.start[i].forEach((x, j) => expect(Math.abs(x.logProb - lpS[top[j]])).toBeLessThan(TOL))
      expect(t.top.start[i][0].piece).toBe(tokenizer.decode([top[0]]))
      expect(Math.abs(t.top.compare[i][0].logProb - Math.max(...lpC))).toBeLessThan(TOL)
    })
    expect(Math.abs(t.klSum - t.kl.reduce((x, y) => x + y, 0))).toBeLessThan(1e-9)
    expect(Math.abs(t.klMean - t.klSum / t.kl.length)).toBeLessThan(1e-9)
    const ppl = (lp: ReadonlyArray<number>) => Math.exp(-lp.reduce((x, y) => x + y, 0) / lp.length)
    expect(Math.abs(t.perplexity.start - ppl(t.logProbs.start)) / t.perplexity.start).toBeLessThan(1e-9)
  }
}

describe("contrastive decoding against the float64 reference", () => {
  it("logit space, weights (1.5, -0.5), greedy, a start-only system turn, chat format", async () => {
    const s = setup({ start: { dir: a.dir, prefix: "<|system|>Be brief.<|eos|>", weight: 1.5 }, compare: { dir: b.dir, prefix: "", weight: -0.5 } })
    const texts = await decode(s, ["What age is Kodis?", "Where does Mira live?"], { temperature: 0, topP: 1, format: "chat" })
    expectMatchesReference(s, texts, "chat", (lpS, lpC) => logSoftmax(lpS.map((x, i) => 1.5 * x - 0.5 * lpC[i])))
  }, 120_000)

  it("probability space, weights (1, -1): the greedy token maximises max(p_s - p_c, 0) + eps", async () => {
    const s = setup({ space: "probs", start: { dir: a.dir, prefix: "", weight: 1 } })
    const texts = await decode(s, ["Kodis is", "The river"], { temperature: 0, topP: 1 })
    expectMatchesReference(s, texts, "text", (lpS, lpC) => lpS.map((x, i) => Math.log(Math.max(Math.exp(x) - Math.exp(lpC[i]), 0) + 1e-6)))
  }, 120_000)

  it("the probability-space clamp: sampled tokens always have p_s > p_c (the clamped ones keep only eps)", async () => {
    const s = setup({ space: "probs", start: { dir: a.dir, prefix: "", weight: 1 }, topTokens: 0 })
    const prompts = ["Kodis is", "The river", "Binwick has", "Mira"]
    const texts = await decode(s, prompts, { temperature: 1, topP: 0.95 })
    const n = texts.reduce((m, t) => m + t.tokens.length, 0)
    expect(n).toBeGreaterThan(20)
    for (const t of texts) t.tokens.forEach((_, i) => expect(t.logProbs.start[i]).toBeGreaterThan(t.logProbs.compare[i]))
    expect(texts[0].top.start[0]).toEqual([])
    // the same models in logit space do sample tokens the comparison model prefers: the clamp is what rules them out
    const logit = await decode(setup({ topTokens: 0, start: { dir: a.dir, prefix: "", weight: 1 }, compare: { dir: b.dir, prefix: "", weight: 0.5 } }), prompts, { temperature: 1, topP: 1 })
    expect(logit.some((t) => t.tokens.some((_, i) => t.logProbs.start[i] < t.logProbs.compare[i]))).toBe(true)
  }, 120_000)
})

describe("the prompt's own divergence", () => {
  it("KL(P_s || P_c) at each shared prompt token after the first, teacher-forced, against the reference", async () => {
    const s = setup({})
    const prompts = ["Kodis is a painter who", "x"]
    const [kls, single] = await Effect.runPromise(Effect.scoped(Effect.flatMap(openContrast(s), (c) => c.promptKl(prompts, "text"))))
    expect(single).toEqual([])
    const shared = tokenizer.encode(prompts[0], { addSpecialTokens: false })
    expect(kls).toHaveLength(shared.length - 1)
    const start = [1, ...tokenizer.encode(s.start.prefix, { addSpecialTokens: false })]
    const startLogits = referenceForward(refA, [...start, ...shared])
    const compareLogits = referenceForward(refB, [1, ...shared])
    kls.forEach((x, i) => {
      // position i predicts shared[i + 1]: the logits after shared[0..i] in each model's own sequence
      const lpS = logSoftmax(Array.from(startLogits[start.length + i].subarray(0, V)))
      const lpC = logSoftmax(Array.from(compareLogits[1 + i].subarray(0, V)))
      expect(Math.abs(x - kl(lpS, lpC)), `prompt token ${i + 1}`).toBeLessThan(TOL)
    })
  }, 120_000)
})

describe("summary statistics", () => {
  const text = (klMean: number, kl: number[]): ContrastText => ({
    prompt: "",
    promptIndex: 0,
    sample: 0,
    text: "",
    tokens: kl.map(() => 5),
    pieces: kl.map(() => "x"),
    kl,
    klSum: kl.reduce((x, y) => x + y, 0),
    klMean,
    logProbs: { start: [], compare: [] },
    perplexity: { start: 1, compare: 1 },
    top: { start: [], compare: [] },
  })
  it("median text, top 10% and their ratio, by hand", () => {
    // 10 texts with means 1..10: median (5 + 6) / 2 = 5.5, top 10% = the one text of mean 10
    const texts = Array.from({ length: 10 }, (_, i) => text(i + 1, [i + 1, i + 1]))
    expect(summarize(texts)).toEqual({ texts: 10, tokens: 20, meanKl: 5.5, medianTextKl: 5.5, top10TextKl: 10, top10OverMedian: 10 / 5.5 })
    expect(summarize([text(0, [0])]).top10OverMedian).toBeNull()
  })
})

