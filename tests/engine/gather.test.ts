// Fan-in over sweeps through the public API: what a gathering stage sees, its key (order-free, one
// new instance per added point), partial gathers, failed instances, and the dry-run display.
import { Effect } from "effect"
import { beforeEach, describe, expect, it } from "vitest"
import { Store, explainPlan, planFile } from "../../src/engine/index.ts"
import { fixture, runApi, sandbox, writePipeline, type Sandbox } from "./helpers.ts"

let sb: Sandbox
beforeEach(() => {
  sb = sandbox()
})

type Run = Awaited<ReturnType<typeof runApi>>
const ran = (s: Run) => s.nodes.filter((n) => n.status === "succeeded").map((n) => n.name).sort()
const collected = (s: Run, node = "collect") => {
  const store = new Store(sb.cacheDir)
  try {
    return JSON.parse(store.readJson(s.nodes.find((n) => n.name === node)!.output!)) as ReadonlyArray<{ coords: Record<string, unknown>; score: number }>
  } finally {
    store.close()
  }
}

describe("gather", () => {
  it("hands every instance of a 3-point sweep to one node, with its coordinates", async () => {
    const s = await runApi(sb, "gather.ts")
    expect(s.status).toBe("succeeded")
    expect(ran(s)).toEqual(["collect", "point[x=1]", "point[x=2]", "point[x=3]"])
    expect(collected(s)).toEqual([
      { coords: { x: 1 }, score: 12 },
      { coords: { x: 2 }, score: 22 },
      { coords: { x: 3 }, score: 32 },
    ])
  })

  it("adding a point runs that instance and the gather only; reordering the sweep keeps everything cached", async () => {
    await runApi(sb, "gather.ts")
    const before = sb.traced().length
    const added = await runApi(sb, "gather.ts", { overrides: ["point.x=sweep([1, 2, 3, 4])"] })
    expect(ran(added)).toEqual(["collect", "point[x=4]"])
    expect(sb.traced().slice(before)).toEqual(["point 4 ab", "collect 4"])
    expect(collected(added).map((p) => p.coords.x)).toEqual([1, 2, 3, 4])

    const reordered = await runApi(sb, "gather.ts", { overrides: ["point.x=sweep([4, 2, 1, 3])"] })
    expect(reordered.counts).toMatchObject({ succeeded: 0, cached: 5 })
    expect(reordered.nodes.find((n) => n.name === "collect")!.key).toBe(added.nodes.find((n) => n.name === "collect")!.key)

    // removing a point reruns the gather only
    const removed = await runApi(sb, "gather.ts", { overrides: ["point.x=sweep([1, 3])"] })
    expect(ran(removed)).toEqual(["collect"])
    expect(collected(removed).map((p) => p.coords.x)).toEqual([1, 3])
  })

  it("early cutoff: instances rerun with identical outputs leave the gather cached", async () => {
    await runApi(sb, "gather.ts")
    const again = await runApi(sb, "gather.ts", { rerun: ["point"] })
    expect(ran(again)).toEqual(["point[x=1]", "point[x=2]", "point[x=3]"])
    expect(again.nodes.find((n) => n.name === "collect")!.status).toBe("cached")
  })

  it("a gathering stage in a child process receives the points too", async () => {
    const file = writePipeline(
      sb,
      "apart.ts",
      `import { Effect, Schema } from "effect"
       import { Artifact, gather, gathered, pipeline, stage, sweep } from "@engine"
       import { Score, point } from ${JSON.stringify(fixture("gather.ts"))}
       const weighted = stage({
         name: "weighted", version: 1, params: Schema.Struct({}), inputs: { points: gathered(Score) },
         output: Artifact.json("Weighted", Schema.Number), resources: { isolate: "process" },
         run: ({ inputs }) => Effect.succeed(inputs.points.reduce((a, p) => a + Number(p.coords.x) * p.value.score, 0)),
       })
       export default pipeline("apart", [weighted({}, { points: gather(point({ x: sweep([3, 1, 2]), y: "ab" })) })])`,
    )
    const s = await runApi(sb, file)
    expect(s.status).toBe("succeeded")
    const store = new Store(sb.cacheDir)
    // 1 * 12 + 2 * 22 + 3 * 32
    expect(JSON.parse(store.readJson(s.nodes.find((n) => n.name === "weighted")!.output!))).toBe(152)
    store.close()
  })

  it("a partial gather over one of two swept params gives one gathering node per value of the other", async () => {
    const file = writePipeline(
      sb,
      "partial.ts",
      `import { gather, pipeline, sweep } from "@engine"
       import { collect, point } from ${JSON.stringify(fixture("gather.ts"))}
       const points = point({ x: sweep([1, 2, 3]), y: sweep(["a", "bbb"]) })
       export default pipeline("partial", [collect({}, { points: gather(points, { over: ["x"] }) })])`,
    )
    const s = await runApi(sb, file)
    expect(s.status).toBe("succeeded")
    expect(ran(s).filter((n) => n.startsWith("collect"))).toEqual(["collect[point.y=a]", "collect[point.y=bbb]"])
    expect(collected(s, "collect[point.y=a]")).toEqual([1, 2, 3].map((x) => ({ coords: { x }, score: 10 * x + 1 })))
    expect(collected(s, "collect[point.y=bbb]")).toEqual([1, 2, 3].map((x) => ({ coords: { x }, score: 10 * x + 3 })))
    expect(sb.traced().filter((l) => l.startsWith("point"))).toHaveLength(6)

    // `over` names a param swept upstream, bare or qualified by call name
    const qualified = writePipeline(sb, "qualified.ts", (await import("node:fs")).readFileSync(file, "utf8").replace('over: ["x"]', 'over: ["point.y"]'))
    const q = await runApi(sb, qualified)
    expect(ran(q).filter((n) => n.startsWith("collect"))).toEqual(["collect[point.x=1]", "collect[point.x=2]", "collect[point.x=3]"])
    expect(collected(q, "collect[point.x=2]")).toEqual([{ coords: { y: "a" }, score: 21 }, { coords: { y: "bbb" }, score: 23 }])
  })

  it("an unknown `over` name is a plan error naming the swept params", async () => {
    const file = writePipeline(
      sb,
      "bad-over.ts",
      `import { gather, pipeline, sweep } from "@engine"
       import { collect, point } from ${JSON.stringify(fixture("gather.ts"))}
       export default pipeline("bad", [collect({}, { points: gather(point({ x: sweep([1, 2]), y: "a" }), { over: ["z"] }) })])`,
    )
    const store = new Store(sb.cacheDir)
    const error = await Effect.runPromise(Effect.flip(planFile(store, file)))
    store.close()
    expect(error.message).toContain(`node "collect": gather(point, { over: ["z"] }): "z" is not a param swept upstream of point (swept: x)`)
  })

  it("a failed instance skips the gather; fixing it reruns that instance and the gather only", async () => {
    const failed = await runApi(sb, "gather.ts", { overrides: ["point.failAt=2"] })
    expect(failed.status).toBe("failed")
    const status = Object.fromEntries(failed.nodes.map((n) => [n.name, n.status]))
    expect(status).toEqual({ "point[x=1]": "succeeded", "point[x=2]": "failed", "point[x=3]": "succeeded", collect: "skipped" })
    expect(failed.nodes.find((n) => n.name === "collect")!.error).toBe("upstream point[x=2] failed")

    const fixed = await runApi(sb, "gather.ts")
    expect(ran(fixed)).toEqual(["collect", "point[x=2]"])
  })

  it("--dry-run shows how many instances a gathering node waits for", async () => {
    const explain = async () => {
      const store = new Store(sb.cacheDir)
      try {
        const p = await Effect.runPromise(planFile(store, fixture("gather.ts"), ["point.x=sweep([1, 2, 3, 4])"]))
        return explainPlan(store, p).find((e) => e.name === "collect")!
      } finally {
        store.close()
      }
    }
    expect(await explain()).toMatchObject({ state: "pending", reason: "gathers 4 instances of point; waits for 4 not done yet (stays cached if their outputs come out unchanged)" })
    await runApi(sb, "gather.ts")
    expect(await explain()).toMatchObject({ state: "pending", reason: expect.stringContaining("waits for 1 not done yet") })
    await runApi(sb, "gather.ts", { overrides: ["point.x=sweep([1, 2, 3, 4])"] })
    expect(await explain()).toMatchObject({ state: "cached" })
  })
})
