// Wiring mistakes with gathers are compile errors (`npm test` type-checks this file first; each
// `@ts-expect-error` fails the check if the line below it ever compiles).
import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import { AnyJson, gather, gathered, pipeline, stage, sweep, type Point } from "../../src/engine/index.ts"
import { collect, point, Score } from "./fixtures/gather.ts"
import { generate, render, sum, train } from "./fixtures/stages.ts"
import { Effect } from "effect"

/** Takes any JSON node's instances (as the sweep table does). */
const anyJson = stage({
  name: "any-json",
  version: 1,
  params: Schema.Struct({}),
  inputs: { points: gathered(AnyJson) },
  output: AnyJson,
  run: ({ inputs }) => Effect.succeed(inputs.points.length),
})

const wire = () => {
  const points = point({ x: sweep([1, 2]), y: "a" })
  const totals = sum({ scale: sweep([1, 2]) }, { numbers: generate({ start: 1, n: 3 }) })
  // the gathered value's element type is the node's artifact type
  const typed = stage({
    name: "typed",
    version: 1,
    params: Schema.Struct({}),
    inputs: { points: gathered(Score) },
    output: Score,
    run: ({ inputs }) => {
      const first: Point<typeof Score.schema.Type> = inputs.points[0]
      // @ts-expect-error a Score has no "total"
      inputs.points[0].value.total
      return Effect.succeed(first.value)
    },
  })
  // @ts-expect-error a gather of Totals is not a gather of Scores
  collect({}, { points: gather(totals) })
  // @ts-expect-error a gathered input needs gather(node), not the node
  collect({}, { points })
  // @ts-expect-error a plain input takes one value, not a gather
  render({ title: "t" }, { total: gather(totals) })
  // @ts-expect-error the generic JSON input does not take file or tensor payloads
  anyJson({}, { points: gather(train({ steps: sweep([1, 2]), lr: 0.1 }, { numbers: generate({ start: 1, n: 3 }) })) })
  // @ts-expect-error "over" lists param names
  gather(points, { over: "x" })
  // the generic JSON input takes any JSON node's gather
  anyJson({}, { points: gather(totals) })
  return pipeline("gather-types", [collect({}, { points: gather(points, { over: ["x"] }) }), typed({}, { points: gather(points) }), anyJson({}, { points: gather(points) })])
}

describe("gather typing", () => {
  it("builds the well-typed pipeline", () => {
    expect(wire().targets).toHaveLength(3)
  })
})
