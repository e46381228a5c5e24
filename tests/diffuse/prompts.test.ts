// Prompt sets in the seed's format: the shipped sets load, and malformed files fail naming the
// file, the field and the reason.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { readPromptSet, targetEntropy } from "../../stages/diffuse/prompts.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const dir = fs.mkdtempSync(path.join(tmpdir(), "pipe-diffuse-prompts-"))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

const ok = { request: "Pick a number.", response: [""], targets: ["1", "2"] }

/** The error message of reading a set holding one file with `content`. */
const failure = (name: string, content: string) => {
  const sub = fs.mkdtempSync(path.join(dir, "set-"))
  const file = path.join(sub, `${name}.json`)
  fs.writeFileSync(file, content)
  const exit = Effect.runSync(Effect.exit(readPromptSet(sub)))
  if (exit._tag !== "Failure") throw new Error(`${name}: expected a failure`)
  const error = JSON.parse(JSON.stringify(exit.cause)) as unknown
  return { file, message: String(JSON.stringify(error)) }
}

const expectFailure = (name: string, value: unknown, ...parts: string[]) => {
  const { file, message } = failure(name, typeof value === "string" ? value : JSON.stringify(value))
  expect(message).toContain(`prompt file ${file}: `)
  for (const p of parts) expect(message).toContain(p)
}

describe("diffuse prompt files", () => {
  it("loads the shipped sets, uniform weights where a file has none", () => {
    const train = Effect.runSync(readPromptSet(path.join(repo, "datasets/diffuse/train")))
    expect(train.prompts.map((p) => p.id)).toEqual(["binomial", "numbers-1-10", "towns"])
    const numbers = train.prompts[1]
    expect(numbers.weights).toEqual(Array(10).fill(0.1))
    expect(targetEntropy(numbers.weights)).toBeCloseTo(Math.log(10), 12)
    // the seed's B(10, 0.2) weights: H = 1.6219 nats; the verbatim seed file has the same
    expect(targetEntropy(train.prompts[0].weights)).toBeCloseTo(1.621929, 5)
    const seed = Effect.runSync(readPromptSet(path.join(repo, "datasets/diffuse/seed/binomial-braces.json")))
    expect(seed.prompts[0].weights).toEqual(train.prompts[0].weights)
    expect(seed.prompts[0].targets[3]).toBe("{3}")
    const test = Effect.runSync(readPromptSet(path.join(repo, "datasets/diffuse/test")))
    expect(test.prompts.length).toBeGreaterThanOrEqual(3)
    // held-out prompts are worded differently from every training prompt
    for (const p of test.prompts) expect(train.prompts.map((t) => t.request)).not.toContain(p.request)
  })

  it("reads one file as a set of one prompt", () => {
    const file = path.join(dir, "single.json")
    fs.writeFileSync(file, JSON.stringify({ ...ok, weights: [0.25, 0.75] }))
    const set = Effect.runSync(readPromptSet(file))
    expect(set.prompts).toEqual([{ id: "single", file, request: ok.request, responses: [""], targets: ["1", "2"], weights: [0.25, 0.75] }])
  })

  it("names the file, the field and the reason for malformed files", () => {
    expectFailure("sum", { ...ok, weights: [0.5, 0.4] }, 'field \\"weights\\": sums to 0.9, expected 1 (within 0.000001)')
    expectFailure("length", { ...ok, weights: [1] }, 'field \\"weights\\": has 1 values but \\"targets\\" has 2')
    expectFailure("empty", { ...ok, targets: [] }, 'field \\"targets\\": is an array (empty), expected a non-empty list of strings')
    expectFailure("duplicate", { ...ok, targets: ["1", "2", "1"] }, 'field \\"targets[2]\\": duplicate target \\"1\\" (also targets[0])')
    expectFailure("negative", { ...ok, weights: [1.5, -0.5] }, 'field \\"weights[1]\\": is -0.5, expected a finite number >= 0')
    expectFailure("request", { ...ok, request: 3 }, 'field \\"request\\": is number, expected a non-empty string')
    expectFailure("no-targets", { request: "x" }, 'field \\"targets\\": missing')
    expectFailure("response", { ...ok, response: [] }, 'field \\"response\\": is an array (empty)')
    expectFailure("blank-target", { ...ok, targets: ["1", ""] }, 'field \\"targets[1]\\": is an empty string')
    expectFailure("json", "{ not json", "not valid JSON")
    expectFailure("array", "[1, 2]", "expected a JSON object")
  })

  it("fails on a directory without prompt files", () => {
    const empty = fs.mkdtempSync(path.join(dir, "empty-"))
    const exit = Effect.runSync(Effect.exit(readPromptSet(empty)))
    expect(JSON.stringify(exit)).toContain(`${empty}: no prompt files (*.json) in this directory`)
  })
})
