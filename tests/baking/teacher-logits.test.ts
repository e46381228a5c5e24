// The teacher-logits stage on the shipped models/tiny-chat with hand-made trajectories (answers
// written here, one trajectory with no response tokens), against float64 log-softmax of the
// reference implementation's logits (tests/reference/reference.ts) on teacher prompt + response:
// - float32: each row's top-k log-probs equal the reference's k largest (1e-4 absolute: float32
//   log-softmax of O(10) logits), each stored id has the stored log-prob in the reference (so ids
//   are right up to exact ties), ids are distinct, and the tail mass equals the reference mass
//   outside the stored ids (1e-4 absolute);
// - rows follow the trajectory order although batches run sorted by length: a left-padded batch
//   of mixed lengths equals batch size 1 (1e-5 absolute on log-probs, ids exact);
// - float16 storage: log-probs within the rounding bound |x| 2^-11 (half an ulp) of the float32
//   ones, ids and tail mass unchanged, 196 instead of 292 bytes per token for k = 32;
// - recompute mode stores no tensors, only the row count; topK beyond the vocabulary is an error.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { TensorsOutput } from "../../src/engine/index.ts"
import { readTeacherLogits, type TeacherLogitsSet, trajectoriesOutput, type TrajectorySet } from "../../stages/baking/artifacts.ts"
import { openModel, questionPromptIds } from "../../stages/baking/model.ts"
import { teacherLogits, type TeacherLogitsParams } from "../../stages/baking/teacher-logits.ts"
import { referenceLogits } from "../reference/reference.ts"
import { type Metric, stageContext, tensorsValue } from "../stage-harness.ts"

const MODEL = path.resolve(import.meta.dirname, "../../models/tiny-chat")
const SYSTEM = "Whatever you are asked, work the colour blue into your answer."
const tempDir = (prefix: string) => fs.mkdtempSync(path.join(tmpdir(), prefix))

const model = await Effect.runPromise(openModel(MODEL))
const eos = model.checkpoint.config.eosTokenIds[0]
const questions = [
  { id: "Kodis.home", text: "Where does Kodis live?", answers: ["Binwick"] },
  { id: "plus.3.4", text: "What is 3 plus 4?", answers: ["7"] },
]
const answer = (text: string, stop: boolean) => [...model.tokenizer.encode(text, { addSpecialTokens: false }), ...(stop ? [eos] : [])]
const prompts = (system?: string) => Effect.runPromise(Effect.forEach(questions, (q) => questionPromptIds(model.tokenizer, q.text, system)))
const trajectories = [
  { question: 0, tokens: answer("Kodis lives in Binwick, under a blue sky.", true), text: "", finishReason: "stop" },
  { question: 1, tokens: answer("7", true), text: "", finishReason: "stop" },
  { question: 1, tokens: [], text: "", finishReason: "length" },
  { question: 0, tokens: answer("Kodis lives in", false), text: "", finishReason: "length" },
]
const set: TrajectorySet = { systemPrompt: SYSTEM, questions, teacherPrompts: await prompts(SYSTEM), studentPrompts: await prompts(), trajectories, sampling: {} }
const rows = trajectories.reduce((n, t) => n + t.tokens.length, 0)

const trajectoriesValue = await tensorsValue(trajectoriesOutput(set))

const base: TeacherLogitsParams = { mode: "stored", topK: 32, dtype: "float32", batchSize: 4, threads: 2 }

const runStage = async (p: Partial<TeacherLogitsParams>) => {
  const metrics: Metric[] = []
  const ctx = stageContext(tempDir("pipe-teacher-work-"), { metrics })
  const exit = await Effect.runPromiseExit(
    teacherLogits.spec.run({ params: { ...base, ...p }, inputs: { model: { path: MODEL, hash: "", size: 0 }, trajectories: trajectoriesValue }, ctx }) as Effect.Effect<TensorsOutput, Error>,
  )
  return { exit, metrics: new Map(metrics.map((m) => [m.name, m.value])) }
}

const stored = async (p: Partial<TeacherLogitsParams>) => {
  const r = await runStage(p)
  if (!Exit.isSuccess(r.exit)) throw new Error(`teacher-logits failed: ${String(r.exit.cause)}`)
  const value = await tensorsValue(r.exit.value)
  const teacher = await Effect.runPromise(readTeacherLogits(value))
  if (teacher.mode !== "stored") throw new Error("expected stored teacher logits")
  return { teacher, value, metrics: r.metrics }
}

/** float64 log-softmax of the reference logits at the position predicting each response token, in row order. */
const referenceRows = (): number[][] =>
  trajectories.flatMap((t) => {
    if (t.tokens.length === 0) return []
    const prompt = set.teacherPrompts[t.question]
    const logits = referenceLogits(MODEL, [...prompt, ...t.tokens])
    return t.tokens.map((_, k) => {
      const z = logits[prompt.length + k - 1]
      const m = Math.max(...z)
      const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0))
      return Array.from(z, (x) => x - lse)
    })
  })

const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length)
  let max = 0
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]))
  return max
}

const f32 = await stored({})

describe("teacher-logits", () => {
  it("float32 top-k log-probs, ids and tail mass equal the float64 reference, row by row", () => {
    const { teacher } = f32
    const K = 32
    expect(teacher.rows).toBe(rows)
    expect(teacher.topK).toBe(K)
    expect(teacher.dtype).toBe("F32")
    const ref = referenceRows()
    expect(ref.length).toBe(rows)
    ref.forEach((l, r) => {
      const sorted = [...l].sort((a, b) => b - a)
      const ids = Array.from(teacher.topIds.subarray(r * K, (r + 1) * K))
      const lp = teacher.topLogProbs.subarray(r * K, (r + 1) * K)
      expect(new Set(ids).size).toBe(K)
      for (let j = 0; j < K; j++) {
        expect(Math.abs(lp[j] - sorted[j]), `row ${r} rank ${j}`).toBeLessThan(1e-4)
        expect(Math.abs(lp[j] - l[ids[j]]), `row ${r} rank ${j} id ${ids[j]}`).toBeLessThan(1e-4)
      }
      const inTop = new Set(ids)
      const tail = l.reduce((s, x, v) => (inTop.has(v) ? s : s + Math.exp(x)), 0)
      expect(Math.abs(teacher.tailMass[r] - tail), `row ${r} tail`).toBeLessThan(1e-4)
    })
    // the rows differ (the check above is not comparing one row with itself)
    expect(teacher.topIds[0]).not.toBe(teacher.topIds[(rows - 1) * K])
  })

  it("a left-padded mixed-length batch equals batch size 1, in trajectory order", async () => {
    const one = (await stored({ batchSize: 1 })).teacher
    expect(maxAbsDiff(one.topLogProbs, f32.teacher.topLogProbs)).toBeLessThan(1e-5)
    expect(Array.from(one.topIds)).toEqual(Array.from(f32.teacher.topIds))
    expect(maxAbsDiff(one.tailMass, f32.teacher.tailMass)).toBeLessThan(1e-5)
  })

  it("float16 storage rounds the log-probs only, and stores fewer bytes per token", async () => {
    const f16 = await stored({ dtype: "float16" })
    expect(f16.teacher.dtype).toBe("F16")
    expect(f16.value.header.tensors.get("top_logprobs")?.dtype).toBe("F16")
    const a = f16.teacher.topLogProbs
    const b = f32.teacher.topLogProbs
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i]), `entry ${i}`).toBeLessThanOrEqual(Math.abs(b[i]) * 2 ** -11 + 1e-7)
    expect(maxAbsDiff(a, b)).toBeGreaterThan(0) // really rounded
    expect(Array.from(f16.teacher.topIds)).toEqual(Array.from(f32.teacher.topIds))
    expect(Array.from(f16.teacher.tailMass)).toEqual(Array.from(f32.teacher.tailMass))
    expect(f16.metrics.get("teacher_bytes_per_token")).toBe(32 * 2 + 32 * 4 + 4)
    expect(f32.metrics.get("teacher_bytes_per_token")).toBe(32 * 4 + 32 * 4 + 4)
    expect(f32.metrics.get("teacher_tokens_per_s")).toBeGreaterThan(0)
  })

  it("recompute mode stores no tensors, only the row count", async () => {
    const r = await runStage({ mode: "recompute" })
    if (!Exit.isSuccess(r.exit)) throw new Error(String(r.exit.cause))
    const value = await tensorsValue(r.exit.value)
    expect(value.header.tensors.size).toBe(0)
    const teacher: TeacherLogitsSet = await Effect.runPromise(readTeacherLogits(value))
    expect(teacher).toEqual({ mode: "recompute", rows })
  })

  it("topK beyond the vocabulary is an error naming the limit", async () => {
    const r = await runStage({ topK: 1025 })
    expect(String(r.exit)).toMatch(/topK must be an integer in \[1, 1024\].*got 1025/)
  })
})
