// stages/baking/distill.ts on the shipped models/tiny-chat:
// - pairBatch places each trajectory left-padded and points at the positions that predict its
//   response tokens (checked against the unpadded sequences);
// - meanPromptedKl equals an independent float64 computation (kl-reference.ts) on three trajectories of different lengths, batched two at a
//   time (so one batch pads); with an adapter, the reference student is the mergeLora checkpoint.
//   Tolerance 1e-4 relative: float32 logits carry ~1e-6 absolute error, the KLs are O(0.1-1) nats;
// - with teacher prompt == student prompt and no adapter the KL is ~0 (1e-6 absolute);
// - klEvaluator on a student variant: a trainable LoRA fed per evaluation gives the frozen one's KL
//   (same arithmetic, 1e-6 relative) and is refused without its values; a variant whose text
//   prefix is what the teacher prompt has in front of the student prompt gives ~0 (the virtual
//   positions sit left of the padding, positions come from the mask; 1e-6 absolute as above, it
//   measures ~1e-10).
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import { describe, expect, it } from "vitest"
import { klEvaluator, lengthSortedBatches, meanPromptedKl, pairBatch, teacherRowStarts } from "../../stages/baking/distill.ts"
import { toFloat32 } from "../../src/core/safetensors.ts"
import { variantNames } from "../../src/models/variant.ts"
import { makeSet, MODEL, model, randomAdapter, referenceKl, SYSTEM, tempDir } from "./kl-reference.ts"

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

    const { adapter, merged } = await randomAdapter()
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

describe("klEvaluator", () => {
  const evaluateWith = (student: Parameters<typeof klEvaluator>[0], set: Awaited<ReturnType<typeof makeSet>>, values?: Record<string, ort.Tensor>) =>
    Effect.scoped(
      Effect.gen(function* () {
        const evaluator = yield* Effect.acquireRelease(klEvaluator(student, opts()), (e) => e.release)
        return yield* evaluator.evaluate(set, values)
      }),
    )

  it("takes a trainable LoRA's values per evaluation, giving the frozen adapter's KL", async () => {
    const set = await makeSet(SYSTEM)
    const { adapter } = await randomAdapter()
    const frozen = await Effect.runPromise(meanPromptedKl(model, set, adapter, opts()))
    const values = Object.fromEntries(
      [...adapter.modules].flatMap(([module, m]) =>
        (["A", "B"] as const).map((which) => {
          const t = which === "A" ? m.a : m.b
          return [variantNames.lora("adapter", module, which), new ort.Tensor("float32", toFloat32(t), [...t.shape])]
        }),
      ),
    )
    const student = { checkpoint: model.checkpoint, loras: [{ name: "adapter", adapter, trainable: true }] }
    const fed = await Effect.runPromise(evaluateWith(student, set, values))
    expect(fed.tokens).toBe(frozen.tokens)
    expect(Math.abs(fed.mean - frozen.mean) / frozen.mean).toBeLessThan(1e-6)
    const error = await Effect.runPromise(Effect.flip(evaluateWith(student, set)))
    expect(error.message).toContain("no values for the student's trainable adapter.lora.")
  }, 60_000)

  it("gives ~0 for a variant whose prefix is what the teacher prompt adds in front", async () => {
    const set = await makeSet(undefined)
    const prefix = model.tokenizer.encode("Blue is the colour of the sky.", { addSpecialTokens: false })
    const prefixed = { ...set, teacherPrompts: set.studentPrompts.map((p) => [...prefix, ...p]) }
    expect((await Effect.runPromise(meanPromptedKl(model, prefixed, undefined, opts()))).mean).toBeGreaterThan(0.1) // the prefix matters
    const kl = await Effect.runPromise(evaluateWith({ checkpoint: model.checkpoint, prefix }, prefixed))
    expect(kl.tokens).toBeGreaterThan(10)
    expect(Math.abs(kl.mean)).toBeLessThan(1e-6)
  }, 60_000)
})
