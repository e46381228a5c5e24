// Contrastive decoding (stages/contrast/contrast.ts) on two random Llamas sharing the tiny-chat
// tokenizer, against a float64 reference (tests/reference/reference.ts) of each model's
// distribution along the generated text: the combined distribution's greedy token, per-token
// KL(P_s || P_c), each model's log-probs and perplexity, each model's top tokens; the
// probability-space rule's clamp; the summary statistics on a hand-computed case; the divergence
// histogram's marks at the summary's values.
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
import { divergencePlot, divergenceTitle, MEDIAN_MARK, TOP10_MARK } from "../../stages/contrast/plot.ts"
import { stageContext } from "../stage-harness.ts"
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

describe("summary statistics", () => {
  it("median text, top 10% and their ratio, by hand", () => {
    // 10 texts with means 1..10: median (5 + 6) / 2 = 5.5, top 10% = the one text of mean 10
    const texts = Array.from({ length: 10 }, (_, i) => text(i + 1, [i + 1, i + 1]))
    expect(summarize(texts)).toEqual({ texts: 10, tokens: 20, meanKl: 5.5, medianTextKl: 5.5, top10TextKl: 10, top10OverMedian: 10 / 5.5 })
    expect(summarize([text(0, [0])]).top10OverMedian).toBeNull()
  })
})


describe("divergence-plot", () => {
  const plot = async (means: ReadonlyArray<number>) => {
    const texts = means.map((m) => text(m, [m]))
    const value = { sorted: false, texts, summary: summarize(texts), display: "" }
    const out = await Effect.runPromise(divergencePlot.spec.run({ params: { label: "pair" }, inputs: { texts: value }, ctx: stageContext(tempDir("pipe-divergence-plot-")) }) as Effect.Effect<Uint8Array>)
    return { svg: new TextDecoder().decode(out), summary: value.summary }
  }
  const ruleX = (svg: string, mark: string) => Number(new RegExp(`aria-label="[^"]*mark: ${mark.replace(/[%()]/g, "\\$&")}" role="graphics-symbol" aria-roledescription="rule mark" transform="translate\\(([-\\d.e]+),0\\)"`).exec(svg)![1])

  it("a histogram of the texts' mean KL with the median text and the top-10% mean at their x, the ratio in the title", async () => {
    // 20 texts from 0.05 to 5 nats/token, evenly in log10: a log x axis over exactly [0.05, 5]
    const means = Array.from({ length: 20 }, (_, i) => 0.05 * 10 ** ((2 * i) / 19))
    const { svg, summary } = await plot(means)
    expect(summary.medianTextKl).toBeCloseTo((means[9] + means[10]) / 2, 12)
    expect(summary.top10TextKl).toBeCloseTo((means[18] + means[19]) / 2, 12)
    const at = (v: number) => (480 * (Math.log10(v) - Math.log10(0.05))) / 2
    expect(ruleX(svg, MEDIAN_MARK)).toBeCloseTo(at(summary.medianTextKl), 6)
    expect(ruleX(svg, TOP10_MARK)).toBeCloseTo(at(summary.top10TextKl), 6)
    // sqrt(20) -> 5 bins of 0.4 decades, 4 texts each
    const counts = [...svg.matchAll(/aria-label="[^"]*count: (\d+)[^"]*" role="graphics-symbol" aria-roledescription="rect mark"/g)].map((m) => Number(m[1]))
    expect(counts).toEqual([4, 4, 4, 4, 4])
    expect(svg).toContain(divergenceTitle("pair", summary))
    expect(divergenceTitle("pair", summary)).toBe(
      `pair: top 10% ${summary.top10TextKl.toFixed(2)} vs median ${summary.medianTextKl.toFixed(2)} nats/token = ${(summary.top10TextKl / summary.medianTextKl).toFixed(2)}x`,
    )
  })

  it("a linear axis for a narrow range; a zero median has no ratio", async () => {
    // 1..10: median 5.5 at 4.5/9 of the width, top 10% the text of 10 at the right edge
    const { svg, summary } = await plot(Array.from({ length: 10 }, (_, i) => i + 1))
    expect(svg).toContain("for a linear scale")
    expect(ruleX(svg, MEDIAN_MARK)).toBeCloseTo((480 * 4.5) / 9, 6)
    expect(ruleX(svg, TOP10_MARK)).toBeCloseTo(480, 6)
    expect(divergenceTitle("pair", summary)).toBe("pair: top 10% 10.00 vs median 5.50 nats/token = 1.82x")
    expect(divergenceTitle("pair", summarize([text(0, [0])]))).toBe("pair: top 10% 0.00 vs median 0.00 nats/token (median 0: no ratio)")
  })
})
