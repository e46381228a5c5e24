// proxy-chat on random Llamas sharing the tiny-chat tokenizer and chat template (tests/blend/fixture.ts
// plus a fourth as the directly tuned reference), on held-out chat records of datasets/tiny-chat:
// the table's rows, and a hand-checkable case: at α = 0 the proxy big + 0·(tuned − untuned) is the
// big model, so its greedy answers are the big model's own.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { proxyChat } from "../../stages/blend/proxy-chat.ts"
import { tempDir } from "../models/forward-helpers.ts"
import { inputRef, stageContext } from "../stage-harness.ts"
import { type BlendFixture, blendFixture, randomCheckpoint, tunedInputs } from "./fixture.ts"

let fx: BlendFixture
let questions: string
beforeAll(async () => {
  fx = await blendFixture()
  fs.mkdirSync(path.join(fx.root, "reference"))
  await randomCheckpoint(path.join(fx.root, "reference"), fx.members[0].checkpoint.config, 8)
  const lines = fs.readFileSync(path.resolve(import.meta.dirname, "../../datasets/tiny-chat/heldout-chat.jsonl"), "utf8").split("\n")
  questions = path.join(fx.root, "questions.jsonl")
  fs.writeFileSync(questions, lines.slice(0, 8).join("\n") + "\n")
}, 60_000)
afterAll(() => fx.cleanup())

const search = { kind: "proxy" as const, topK: null, trials: [], best: { params: { alpha: 0.5 }, perplexity: 1 }, members: {} }

describe("proxy-chat", () => {
  it("answers with every model and proxy; at α = 0 the proxy answers as the big model", async () => {
    const exit = await Effect.runPromiseExit(
      proxyChat.spec.run({
        params: { alphas: [0], limit: 3, maxNewTokens: 6, temperature: 0.7, seed: 0, batchSize: 4, threads: 0 },
        inputs: { big: inputRef(fx.dirs.big), ...(await tunedInputs(fx.dirs.tuned)), untuned: inputRef(fx.dirs.untuned), reference: inputRef(path.join(fx.root, "reference")), questions: inputRef(questions), search },
        ctx: stageContext(tempDir("pipe-proxy-chat-")),
      }) as Effect.Effect<any, any>,
    )
    expect(Exit.isSuccess(exit), String(Exit.isFailure(exit) && exit.cause)).toBe(true)
    if (!Exit.isSuccess(exit)) return
    const out = exit.value
    expect(out.rows.map((r: { model: string }) => r.model)).toEqual(["big", "reference", "tuned", "proxy α=0", "proxy α=0.5 (searched)"])
    for (const r of out.rows) expect(r.accuracy.n).toBe(3)
    expect(out.examples.length).toBe(3)
    for (const e of out.examples) {
      expect(e.answers["proxy α=0"]).toBe(e.answers.big)
      expect(e.answers["proxy α=0.5 (searched)"]).not.toBe(undefined)
    }
    // the α = 0.5 proxy is another model: somewhere its answers differ from the big model's
    expect(out.examples.some((e: { answers: Record<string, string> }) => e.answers["proxy α=0.5 (searched)"] !== e.answers.big)).toBe(true)
    expect(out.markdown).toContain("| model | accuracy | gap closed |")
  }, 300_000)
})
