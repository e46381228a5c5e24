// soft-prompt-report on hand-made evaluations: the loss-vs-k table per objective, the pathfinding
// rollouts by decoding, and the detuning gap against the base model, with and without k = 0 in the detuning sweep (a user's
// `--set 'train_detuning.k=sweep([4, 16])'` must still publish a report).
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { SoftPromptEvaluation } from "../../stages/soft-prompts/evaluate.ts"
import { softPromptReport } from "../../stages/soft-prompts/report.ts"
import { stageContext } from "../stage-harness.ts"

const evaluation = (model: string, objective: string, k: number, testLoss: number): SoftPromptEvaluation => ({ model, objective, k, testLoss, testTokens: 100, rollouts: [] })
const points = (model: string, objective: string, losses: Record<number, number>) =>
  Object.entries(losses).map(([k, loss]) => ({ coords: { k: Number(k) }, value: evaluation(model, objective, Number(k), loss) }))

const stats = { tasks: 8, legal: 0.5, meanMoves: 5, meanOptimal: 4.5 }
// k = 16 rolled out under one condition, greedy (8 paths) and sampled (4 per grid)
const rolledOut = {
  coords: { k: 16 },
  value: {
    ...evaluation("navigator", "pathfinding", 16, 2),
    rollouts: [
      { condition: 0.5, temperature: 0, rollouts: 8, validity: 0.5, lengthRatio: 1, ...stats },
      { condition: 0.5, temperature: 1, rollouts: 32, validity: 0.25, lengthRatio: 0.8, ...stats },
    ],
  },
}

const report = (detuning: Record<number, number>) =>
  Effect.runPromise(
    softPromptReport.spec.run({
      params: { title: "t" },
      inputs: {
        autoregressive: points("model", "next token", { 0: 0.5, 16: 0.51 }),
        skip: points("model", "skip 1", { 0: 12, 16: 8 }),
        repetition: points("model", "repeat", { 0: 12, 16: 0.5 }),
        detuning: points("chat", "next token", detuning),
        detuningBase: evaluation("base", "next token", 0, 0.5),
        pathfinding: [...points("navigator", "pathfinding", { 0: 16 }), rolledOut],
      },
      ctx: stageContext(fs.mkdtempSync(path.join(tmpdir(), "pipe-soft-report-"))),
    }),
  )

describe("soft-prompt-report", () => {
  it("tables each objective over k and states the detuning gap at k = 0 and with the best prompt", async () => {
    const r = await report({ 0: 0.75, 4: 0.7, 16: 0.72 })
    expect(r.detuning).toMatchObject({ chatAtZero: 0.75, chatBest: 0.7 })
    expect(r.detuning.gapAtZero).toBeCloseTo(0.5, 12)
    expect(r.detuning.gapBest).toBeCloseTo(0.4, 12)
    expect(r.markdown).toContain("| model | 0.5000 | 0.5100 | +0.0% |")
    expect(r.markdown).toContain("+50.0% at k = 0, +40.0% with the best soft prompt (base 0.5000, chat 0.7500 -> 0.7000)")
    expect(r.markdown).toContain("| 16 | 0.5 | greedy | 50.0% (8 paths, 8 grids) | 50.0% | 1.000 | 5.0 (4.5) |")
    expect(r.markdown).toContain("| 16 | 0.5 | sampled, T = 1, 4 per grid | 25.0% (32 paths, 8 grids) | 50.0% | 0.800 | 5.0 (4.5) |")
  })

  it("without k = 0 in the detuning sweep, reports the best prompt's gap alone", async () => {
    const r = await report({ 4: 0.7, 16: 0.72 })
    expect(r.detuning).toMatchObject({ chatAtZero: null, gapAtZero: null, chatBest: 0.7 })
    expect(r.markdown).toContain("+40.0% with the best soft prompt (base 0.5000, chat 0.7000; k = 0 is not in the sweep)")
  })
})
