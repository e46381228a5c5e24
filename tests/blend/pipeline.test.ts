// pipelines/blend.ts end to end at reduced size on random Llamas sharing a tokenizer
// (tests/blend/fixture.ts), big, untuned and the texts pointed elsewhere with --set, as a user points
// them at real checkpoints, the small tuned member tuned by the pipeline from untuned: every node
// runs, the report, the plots and the JSON land in the run folder, and a second run is fully cached.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { runPipeline, silentReporter, Store } from "../../src/engine/index.ts"
import type { BlendEvaluation } from "../../stages/blend/evaluate.ts"
import { sandbox } from "../engine/helpers.ts"
import { type BlendFixture, blendFixture, randomCheckpoint } from "./fixture.ts"

const pipelineFile = path.resolve(import.meta.dirname, "../../pipelines/blend.ts")
const sb = sandbox()
let fx: BlendFixture
let overrides: string[]

beforeAll(async () => {
  fx = await blendFixture()
  const words = ["the", "fox", "ran", "to", "a", "river", "and", "saw", "bird", "under", "tree", "old", "town", "light"]
  const texts = Array.from({ length: 24 }, (_, i) => ({
    genre: i % 4 === 3 ? "bio" : "story",
    text: Array.from({ length: 30 }, (_, t) => words[(i * 7 + t * t * 3 + t) % words.length]).join(" "),
  }))
  // tune-domain pads its batches and refuses a story longer than a row (the corpus' stories run to
  // ~140 tokens with the fixture's tiny-chat tokenizer)
  const untuned = path.join(fx.root, "untuned-trainable")
  fs.mkdirSync(untuned)
  await randomCheckpoint(untuned, { ...fx.members[2].checkpoint.config, maxPositions: 256, padTokenId: 0 }, 7)
  const textsFile = path.join(fx.root, "plain.json")
  fs.writeFileSync(textsFile, JSON.stringify({ train: [], heldOut: texts }))
  overrides = [
    `big.path=${fx.dirs.big}`,
    `untuned.path=${untuned}`,
    `texts.path=${textsFile}`,
    // the small tuned member is the untuned one tuned by the pipeline on a reduced corpus's stories
    "plain-corpus.storiesPerPerson=2",
    "tune-domain.epochs=1",
    "tune-domain.maxLength=256",
    "held-out.maxTokens=40",
    "search.trials=12",
    "search_topk.trials=12",
    "evaluate-blend.maxTokensBack=8",
    "evaluate-blend.positionsPerBucket=16",
    "generate-blend.maxNewTokens=6",
    "generate-blend.samplesPerPrompt=1",
  ]
}, 60_000)
afterAll(() => {
  fx.cleanup()
  fs.rmSync(sb.dir, { recursive: true, force: true })
})

const run = async () => {
  const store = new Store(sb.cacheDir)
  try {
    return await Effect.runPromise(runPipeline({ store, pipelineFile, overrides, runsDir: sb.runsDir, reporter: silentReporter }))
  } finally {
    store.close()
  }
}

describe("pipelines/blend.ts at reduced size", () => {
  it("runs every stage, publishes the report, the two plots and the evaluation, then reruns nothing", async () => {
    const first = await run()
    expect(first.nodes.filter((n) => n.status !== "succeeded").map((n) => `${n.name}: ${n.status}`)).toEqual([])
    const file = (f: string) => fs.readFileSync(path.join(first.runDir, f), "utf8")
    const e = JSON.parse(file("evaluation.json")) as BlendEvaluation
    expect(e.buckets.map((b) => b.tokensBack)).toEqual([1, 2, 4, 8, null])
    expect(Object.keys(e.overall).sort()).toEqual(["big", "blend", "blend (top 5)", "tuned", "untuned"])
    // 18 story texts cut to 40 tokens: 9 test texts, 39 positions each; bio texts were filtered out
    expect(e.positions).toBe(9 * 39)
    for (const b of e.buckets) for (const p of Object.values(b.perplexity)) expect(Number.isFinite(p) && p > 1).toBe(true)
    const md = file("blend.md")
    expect(md).toContain("| tokens back | targets | big | tuned | untuned | blend |")
    expect(md).toContain("blend (top 5)")
    expect(md).toContain("big alone:")
    for (const svg of ["perplexity-vs-tokens-back.svg", "validation-perplexity-over-trials.svg"]) expect(file(svg)).toMatch(/^<svg[^]*<\/svg>\s*$/)
    expect(JSON.parse(file("search.json")).trials).toHaveLength(12)

    const second = await run()
    expect(second.nodes.filter((n) => n.status === "succeeded").map((n) => n.name)).toEqual([])
  }, 600_000)
})
