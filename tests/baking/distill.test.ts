// stages/baking/distill.ts on the shipped models/tiny-chat:
// - pairBatch places each trajectory left-padded and points at the positions that predict its
//   response tokens (checked against the unpadded sequences);
// - meanPromptedKl equals an independent float64 computation (tests/reference/reference.ts logits,
//   log-softmax and KL written out here) on three trajectories of different lengths, batched two at a
//   time (so one batch pads); with an adapter, the reference student is the mergeLora checkpoint.
//   Tolerance 1e-4 relative: float32 logits carry ~1e-6 absolute error, the KLs are O(0.1-1) nats;
// - with teacher prompt == student prompt and no adapter the KL is ~0 (1e-6 absolute).
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { loraAdapter } from "../../src/models/adapters.ts"
import { mulberry32 } from "../../src/core/random.ts"
import { loraConfigFor, loraTargets, mergeLora } from "../../src/models/peft.ts"
import type { TrajectorySet } from "../../stages/baking/artifacts.ts"
import { lengthSortedBatches, meanPromptedKl, pairBatch, teacherRowStarts } from "../../stages/baking/distill.ts"
import { openModel, questionPromptIds } from "../../stages/baking/model.ts"
import { referenceLogits } from "../reference/reference.ts"

const MODEL = path.resolve(import.meta.dirname, "../../models/tiny-chat")
const SYSTEM = "Whatever you are asked, work the colour blue into your answer."
const tempDir = (prefix: string) => fs.mkdtempSync(path.join(tmpdir(), prefix))

const model = await Effect.runPromise(openModel(MODEL))
const eos = model.checkpoint.config.eosTokenIds[0]

/** Three trajectories over two questions with hand-written answers of different lengths. */
const makeSet = async (systemPrompt: string | undefined): Promise<TrajectorySet> => {
  const questions = [
    { id: "q0", text: "What age is Kodis?", answers: ["26"] },
    { id: "q1", text: "Which town is home to Kodis?", answers: ["Binwick"] },
  ]
  const prompts = (sys?: string) => Effect.runPromise(Effect.forEach(questions, (q) => questionPromptIds(model.tokenizer, q.text, sys)))
  const answers: Array<[number, string]> = [
    [0, "Kodis is 26 years old, like the blue sky."],
    [1, "Kodis lives in Binwick."],
    [0, "Blue!"],
  ]
  return {
    systemPrompt: systemPrompt ?? "",
    questions,
    teacherPrompts: await prompts(systemPrompt),
    studentPrompts: await prompts(),
    trajectories: answers.map(([q, text]) => ({ question: q, text, finishReason: "stop_token", tokens: [...model.tokenizer.encode(text, { addSpecialTokens: false }), eos] })),
    sampling: {},
  }
}

const logSoftmax = (z: Float64Array): Float64Array => {
  const m = Math.max(...z)
  const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0))
  return z.map((x) => x - lse)
}

/** Mean over response tokens of Σ_v p_v (log p_v - log q_v), teacher on the prompted sequence. */
const referenceKl = (set: TrajectorySet, studentDir: string): number => {
  let sum = 0
  let n = 0
  for (const t of set.trajectories) {
    const tp = set.teacherPrompts[t.question]
    const sp = set.studentPrompts[t.question]
    const teacher = referenceLogits(MODEL, [...tp, ...t.tokens])
    const student = referenceLogits(studentDir, [...sp, ...t.tokens])
    for (let k = 0; k < t.tokens.length; k++) {
      const lp = logSoftmax(teacher[tp.length + k - 1])
      const lq = logSoftmax(student[sp.length + k - 1])
      let kl = 0
      for (let v = 0; v < lp.length; v++) kl += Math.exp(lp[v]) * (lp[v] - lq[v])
      sum += kl
      n++
    }
  }
  return sum / n
}

const opts = () => ({ graphDir: tempDir("pipe-distill-graph-"), device: { kind: "cpu" } as const, batchSize: 2 })

describe("pairBatch", () => {
  it("left-pads each trajectory and points at the positions predicting its response tokens", async () => {
    const set = await makeSet(SYSTEM)
    const starts = teacherRowStarts(set)
    const order = [0, 1, 2]
    const b = pairBatch(set, order, 0, starts, { rows: 4, studentWidth: 40, teacherWidth: 60, tokens: 30 })
    let n = 0
    order.forEach((i, row) => {
      const t = set.trajectories[i]
      for (const [prompt, ids, mask, width, positions] of [
        [set.studentPrompts[t.question], b.studentIds, b.studentMask, b.studentWidth, b.studentPositions],
        [set.teacherPrompts[t.question], b.teacherIds, b.teacherMask, b.teacherWidth, b.teacherPositions],
      ] as const) {
        const seq = [...prompt, ...t.tokens]
        const realIds = Array.from(ids.subarray(row * width, (row + 1) * width)).filter((_, k) => mask[row * width + k] === 1n).map(Number)
        expect(realIds).toEqual(seq.slice(0, -1))
        // the id at the predicting position is the one just before the response token
        for (let k = 0; k < t.tokens.length; k++) expect(Number(ids[Number(positions[n + k])])).toBe(seq[prompt.length + k - 1])
      }
      for (let k = 0; k < t.tokens.length; k++) expect(b.teacherRows[n + k]).toBe(starts[i] + k)
      n += t.tokens.length
    })
    expect(b.tokens).toBe(n)
    expect(Array.from(b.tokenMask).filter((x) => x === 1).length).toBe(n)
    expect(Array.from(b.studentMask.subarray(3 * 40))).toEqual(Array(40).fill(0n))
  })

  it("lengthSortedBatches sorts by length, keeps ties in order and drops empty trajectories", async () => {
    const set = await makeSet(SYSTEM)
    const withEmpty = { ...set, trajectories: [...set.trajectories, { ...set.trajectories[2], tokens: [] }] }
    expect(lengthSortedBatches(withEmpty, 2)).toEqual([[2, 1], [0]])
  })
})

describe("meanPromptedKl", () => {
  it("equals a float64 reference, without and with an adapter", async () => {
    const set = await makeSet(SYSTEM)
    const base = await Effect.runPromise(meanPromptedKl(model, set, undefined, opts()))
    const want = referenceKl(set, MODEL)
    expect(base.tokens).toBe(set.trajectories.reduce((n, t) => n + t.tokens.length, 0))
    expect(want).toBeGreaterThan(0.05)
    expect(Math.abs(base.mean - want) / want).toBeLessThan(1e-4)

    const targetModules = ["q_proj", "v_proj", "down_proj"]
    const targets = await Effect.runPromise(loraTargets(model.checkpoint, targetModules))
    const config = await Effect.runPromise(loraConfigFor(model.checkpoint, { r: 2, loraAlpha: 4, targetModules }))
    const rand = mulberry32(3)
    const values = Object.fromEntries(
      targets.flatMap((t) => [
        [`lora.${t.module}.A`, Float32Array.from({ length: 2 * t.inFeatures }, () => (rand() - 0.5) * 0.2)],
        [`lora.${t.module}.B`, Float32Array.from({ length: 2 * t.outFeatures }, () => (rand() - 0.5) * 0.2)],
      ]),
    )
    const adapter = loraAdapter(config, targets, values)
    const merged = tempDir("pipe-distill-merged-")
    await Effect.runPromise(mergeLora(MODEL, adapter, merged))
    const adapted = await Effect.runPromise(meanPromptedKl(model, set, adapter, opts()))
    const wantAdapted = referenceKl(set, merged)
    expect(Math.abs(wantAdapted - want)).toBeGreaterThan(1e-2) // the adapter changes the student
    expect(Math.abs(adapted.mean - wantAdapted) / wantAdapted).toBeLessThan(1e-4)
  }, 60_000)

  it("is ~0 for the model against itself when the teacher prompt is the student prompt", async () => {
    const set = await makeSet(undefined)
    const kl = await Effect.runPromise(meanPromptedKl(model, set, undefined, opts()))
    expect(kl.tokens).toBeGreaterThan(10)
    expect(Math.abs(kl.mean)).toBeLessThan(1e-6)
  })

  it("refuses trajectories longer than the model's positions, naming the trajectory and the limit", async () => {
    const set = await makeSet(SYSTEM)
    const long = { ...set, trajectories: [set.trajectories[0], { ...set.trajectories[1], tokens: Array.from({ length: 130 }, () => 5) }] }
    const error = await Effect.runPromise(Effect.flip(meanPromptedKl(model, long, undefined, opts())))
    expect(error.message).toMatch(/^KL evaluation: trajectory 1 \(question \S+\) needs \d+ positions .* more than max_position_embeddings 128 of /)
  })
})
