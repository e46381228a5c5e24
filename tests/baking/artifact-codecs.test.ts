// Tensor artifacts and files between stages are decoded with Schema: a damaged or foreign payload
// fails where it is read, with an ArtifactError naming the file and the field (a metadata key, a
// JSON path inside it, or a tensor), never with a TypeError somewhere later. Each case damages one
// field of a valid artifact, so the error can only come from that field.
import { Effect, Exit } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import type { ArtifactError, TensorsOutput, TensorsValue } from "../../src/engine/index.ts"
import { fromNumbers, type Tensor } from "../../src/core/safetensors.ts"
import { readTeacherLogits, readTrajectories, teacherLogitsOutput, trajectoriesOutput, type TrajectorySet } from "../../stages/baking/artifacts.ts"
import { configOf, readCorpus } from "../../stages/tiny-chat/artifacts.ts"
import { tensorsValue } from "../stage-harness.ts"

const set: TrajectorySet = {
  systemPrompt: "Be blue.",
  questions: [
    { id: "a", text: "Where?", answers: ["here"] },
    { id: "b", text: "When?", answers: [] },
  ],
  teacherPrompts: [[1, 2, 3], [1, 4]],
  studentPrompts: [[3], [4]],
  trajectories: [
    { question: 1, tokens: [5, 6], text: "now", finishReason: "stop" },
    { question: 0, tokens: [7], text: "here", finishReason: "length" },
  ],
  sampling: { temperature: 1 },
}

type Out = Extract<TensorsOutput, { tensors: unknown }>
const valid = trajectoriesOutput(set) as Out

/** `output` with metadata keys replaced (undefined: removed) and tensors replaced. */
const damaged = (output: Out, metadata: Record<string, string | undefined>, tensors: Record<string, Tensor> = {}): Out => {
  const meta = { ...output.metadata, ...metadata }
  for (const [k, v] of Object.entries(metadata)) if (v === undefined) delete meta[k]
  return { tensors: new Map([...(output.tensors as ReadonlyMap<string, Tensor>), ...Object.entries(tensors)]), metadata: meta as Record<string, string> }
}

const failure = async <A, E>(e: Effect.Effect<A, E>) => {
  const exit = await Effect.runPromiseExit(e)
  if (Exit.isSuccess(exit)) throw new Error("expected a failure")
  return exit.cause.reasons.find((r) => r._tag === "Fail")!.error as E
}

/** Each case `[what, output, field, message]`: `read` refuses the output with an ArtifactError naming its file and `field`. */
const refused = (read: (v: TensorsValue) => Effect.Effect<unknown, ArtifactError>, kind: string, cases: ReadonlyArray<[string, Out, string, RegExp]>) => {
  for (const [what, output, field, message] of cases)
    it(`${what}: ArtifactError naming the file and ${field}`, async () => {
      const value = await tensorsValue(output)
      const err = await failure(read(value))
      expect(err).toMatchObject({ _tag: "ArtifactError", path: value.path, field })
      expect(err.message).toContain(`${value.path}: not ${kind}`)
      expect(err.message).toMatch(message)
    })
}

describe("Trajectories metadata and tensors decode with Schema", () => {
  it("reads a valid artifact back unchanged", async () => {
    expect(await Effect.runPromise(readTrajectories(await tensorsValue(valid)))).toEqual(set)
  })

  const cases: Array<[string, Out, string, RegExp]> = [
    ["a question id of the wrong type", damaged(valid, { questions: JSON.stringify([{ id: 3, text: "Where?", answers: [] }, set.questions[1]]) }), "questions[0].id", /Expected string/],
    ["metadata that is not JSON", damaged(valid, { sampling: "{temperature" }), "sampling", /JSON/],
    ["a missing metadata key", damaged(valid, { texts: undefined }), "texts", /Missing key/],
    ["fewer texts than responses", damaged(valid, { texts: JSON.stringify(["now"]) }), "texts", /texts has 1 entries for 2 responses/],
    ["a question index past the questions", damaged(valid, {}, { question_index: fromNumbers([1, 2], "I32", [2]) }), "question_index", /question_index\[1\] is 2, not one of the 2 questions/],
  ]
  refused(readTrajectories, "a Trajectories artifact", cases)

  it("a foreign tensors file (another artifact type) is refused by its first missing key", async () => {
    const value = await tensorsValue({ tensors: new Map([["w", fromNumbers([1], "F32", [1])]]), metadata: { config: "{}" } })
    expect(await failure(readTrajectories(value))).toMatchObject({ _tag: "ArtifactError", field: "system_prompt" })
  })
})

describe("TeacherLogits metadata and tensors decode with Schema", () => {
  const stored = teacherLogitsOutput({
    mode: "stored",
    rows: 2,
    topK: 2,
    dtype: "F32",
    topLogProbs: Float32Array.from([-0.1, -2, -0.5, -1]),
    topIds: Int32Array.from([3, 1, 0, 2]),
    tailMass: Float32Array.from([0.01, 0.02]),
  }) as Out

  it("reads both modes back", async () => {
    const back = await Effect.runPromise(readTeacherLogits(await tensorsValue(stored)))
    expect(back).toMatchObject({ mode: "stored", rows: 2, topK: 2, dtype: "F32" })
    expect(Array.from((back as { topIds: Int32Array }).topIds)).toEqual([3, 1, 0, 2])
    expect(await Effect.runPromise(readTeacherLogits(await tensorsValue(teacherLogitsOutput({ mode: "recompute", rows: 7 }))))).toEqual({ mode: "recompute", rows: 7 })
  })

  const cases: Array<[string, Out, string, RegExp]> = [
    ["an unknown mode", damaged(stored, { mode: "cached" }), "mode", /"stored" \| "recompute"|Expected/],
    ["a row count that is not a number", damaged(stored, { rows: "two" }), "rows", /Expected/],
    ["a fractional top_k", damaged(stored, { top_k: "1.5" }), "top_k", /integer/],
    ["a tensor shorter than rows x top_k", damaged(stored, {}, { top_ids: fromNumbers([3, 1, 0], "I32", [3]) }), "top_ids", /top_ids has 3 values, expected 4 \(rows 2, top_k 2\)/],
    ["a missing tensor", { tensors: new Map([...(stored.tensors as ReadonlyMap<string, Tensor>)].filter(([k]) => k !== "tail_mass")), metadata: stored.metadata! }, "tensors", /tail_mass/],
  ]
  refused(readTeacherLogits, "a TeacherLogits artifact", cases)
})

describe("tiny-chat files decode with Schema", () => {
  const dir = fs.mkdtempSync(path.join(tmpdir(), "pipe-codecs-"))
  const example = { id: "t1", messages: [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello" }], mode: "none", task: "lookup", about: "Mira.home" }
  const record = { ...example, id: "h1", system_prompt_seen: null, heldout_kind: "new_template", answers: ["Binwick"], reference: "Binwick." }

  it("reads a chat corpus, and names the record and field of a wrong one", async () => {
    const good = path.join(dir, "good.json")
    fs.writeFileSync(good, JSON.stringify({ train: [example], heldOutChat: [record] }))
    expect((await Effect.runPromise(readCorpus(good))).heldOutChat[0].answers).toEqual(["Binwick"])
    const bad = path.join(dir, "bad.json")
    fs.writeFileSync(bad, JSON.stringify({ train: [example], heldOutChat: [record, { ...record, mode: "loud" }] }))
    const err = await failure(readCorpus(bad))
    expect(err).toMatchObject({ _tag: "ArtifactError", path: bad, field: "heldOutChat[1].mode" })
    expect(err.message).toContain(`${bad}: not a chat corpus: field heldOutChat[1].mode:`)
  })

  it("a weights artifact without its config.json text is refused naming the field", async () => {
    const value = await tensorsValue({ tensors: new Map([["w", fromNumbers([1], "F32", [1])]]), metadata: { other: "x" } })
    expect(await failure(configOf(value))).toMatchObject({ _tag: "ArtifactError", path: value.path, field: "config" })
  })
})
