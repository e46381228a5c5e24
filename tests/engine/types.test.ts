// Wiring mistakes are compile errors: `npm test` runs `tsc --noEmit` over this file first, and each
// `@ts-expect-error` fails the type check if the line below it ever compiles.
import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import { external, pipeline, sweep, zip, type External, type Node } from "../../src/engine/index.ts"
import { Text, Vectors, generate, inspect, lines, modulo, render, sum, train } from "./fixtures/stages.ts"

const wire = () => {
  const numbers = generate({ start: 1, n: 3 })
  const total = sum({ scale: 1 }, { numbers })
  // @ts-expect-error a Total (sum's output) is not Numbers
  modulo({ mod: 2 }, { numbers: total })
  // @ts-expect-error a Text file is not Vectors, although both are stored as files
  inspect({}, { weights: render({ title: "t" }, { total }) })
  // @ts-expect-error a missing input
  sum({ scale: 1 }, {})
  // @ts-expect-error an unknown input name
  sum({ scale: 1 }, { numbers, extra: numbers })
  // @ts-expect-error a param of the wrong type
  sum({ scale: "1" }, { numbers })
  // @ts-expect-error a sweep of the wrong type
  sum({ scale: sweep(["a", "b"]) }, { numbers })
  // @ts-expect-error a directory is not a file
  lines({}, { text: external.dir("models/tiny") })
  // The generic File input takes any file payload: an external file, a Text file, tensors.
  lines({}, { text: external.file("notes.txt") })
  lines({}, { text: render({ title: "t" }, { total }) })
  lines({}, { text: train({ steps: 1, lr: 0.1 }, { numbers }) })
  const weights: Node<typeof Vectors> = train({ ...zip({ steps: [1, 2], lr: [0.1, 0.2] }) }, { numbers })
  return pipeline("types", [inspect({}, { weights })])
}

// Never called (some of these throw when run): only type-checked.
export const namedAndPublished = () => {
  lines({}, { text: external.file("notes.txt", { name: "notes" }) })
  // @ts-expect-error a named directory is still not a file
  lines({}, { text: external.dir("models/tiny", { name: "model" }) })
  const typed: External<typeof Text> = external.file("notes.txt", { name: "notes", type: Text })
  const positional: External<typeof Text> = external.file("notes.txt", Text)
  const total = sum({ scale: 1 }, { numbers: generate({ start: 1, n: 3 }) })
  const weights = train({ steps: 1, lr: 0.1 }, { numbers: generate({ start: 1, n: 3 }) })
  pipeline("p", [total], { publish: { "t.json": total, "t.txt": { from: total, as: (t) => `${t.total} of ${t.count}` }, "w.st": weights }, print: ["t.txt"] })
  // @ts-expect-error `as` gets the node's value type: Total has no "mean"
  pipeline("p", [total], { publish: { "t.txt": { from: total, as: (t) => t.mean } } })
  // @ts-expect-error print names a published file
  pipeline("p", [total], { publish: { "t.json": total }, print: ["t.md"] })
  // @ts-expect-error `as` renders JSON values only
  pipeline("p", [total], { publish: { "w.txt": { from: weights, as: (w) => w } } })
  return [typed, positional]
}

describe("stage typing", () => {
  it("builds the well-typed pipeline", () => {
    const p = wire()
    expect(p.targets).toHaveLength(1)
    expect(Schema.isSchema(generate.spec.params)).toBe(true)
  })
})
