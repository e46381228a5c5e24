// Engine behaviour through the public API on a real SQLite cache and filesystem: caching, keys,
// early cutoff, sweeps and dedupe, failures, corruption, external files, bad params and files.
import { readdirSync, readFileSync, writeFileSync, utimesSync, statSync } from "node:fs"
import { join } from "node:path"
import { Effect } from "effect"
import { beforeEach, describe, expect, it } from "vitest"
import { Store, planFile } from "../../src/engine/index.ts"
import { fixture, runApi, sandbox, writePipeline, type Sandbox } from "./helpers.ts"

let sb: Sandbox
beforeEach(() => {
  sb = sandbox()
  writeFileSync(join(sb.dir, "notes.txt"), "alpha\nbe\n")
})

const planError = async (file: string, overrides: ReadonlyArray<string> = []) => {
  const store = new Store(sb.cacheDir)
  try {
    return (await Effect.runPromise(Effect.flip(planFile(store, fixture(file), overrides)))).message
  } finally {
    store.close()
  }
}

const count = (prefix: string) => sb.traced().filter((l) => l.startsWith(prefix)).length

describe("caching", () => {
  it("reuses every result on rerun, and dedupes calls with equal keys", async () => {
    const first = await runApi(sb, "chain.ts")
    expect(first.status).toBe("succeeded")
    // generate and again differ only in the unkeyed `batch`: one node, run once.
    expect(first.nodes.map((n) => n.name)).not.toContain("again")
    expect(count("generate")).toBe(1)
    expect(first.counts).toMatchObject({ succeeded: 6, cached: 0 })
    const second = await runApi(sb, "chain.ts")
    expect(second.counts).toMatchObject({ succeeded: 0, cached: 6 })
    expect(sb.traced().length).toBe(6)
  })

  it("a param change reruns that node and its downstream only", async () => {
    await runApi(sb, "chain.ts")
    const before = sb.traced().length
    const s = await runApi(sb, "chain.ts", { overrides: ["render.title=changed"] })
    expect(sb.traced().slice(before)).toEqual(["render changed", "lines"])
    expect(s.counts).toMatchObject({ succeeded: 2, cached: 4 })
  })

  it("early cutoff: an upstream rerun with identical output leaves downstream cached", async () => {
    await runApi(sb, "chain.ts")
    const before = sb.traced().length
    // 1..10 mod 100 and mod 200 are the same list: modulo reruns, sum/render/lines stay cached.
    const s = await runApi(sb, "chain.ts", { overrides: ["modulo.mod=200"] })
    expect(sb.traced().slice(before)).toEqual(["modulo 200"])
    expect(s.nodes.find((n) => n.name === "sum")!.status).toBe("cached")
  })

  it("--rerun forces a stage even when cached", async () => {
    await runApi(sb, "chain.ts")
    const before = sb.traced().length
    await runApi(sb, "chain.ts", { rerun: ["sum"] })
    expect(sb.traced().slice(before).sort()).toEqual(["sum 1", "sum 3"])
  })
})

describe("sweeps", () => {
  it("expands the cartesian product and runs shared upstream once", async () => {
    const s = await runApi(sb, "example.ts", { jobs: 2 })
    expect(s.status).toBe("succeeded")
    expect(count("generate")).toBe(2) // start in {1, 100}
    expect(count("modulo")).toBe(2) // shared by both scales
    expect(count("sum")).toBe(4)
    expect(count("render")).toBe(4)
    expect(s.nodes.map((n) => n.name)).toContain("sum[generate.start=100,scale=2]")
    const sums = s.nodes.filter((n) => n.name.startsWith("sum["))
    expect(new Set(sums.map((n) => n.key)).size).toBe(4)
  })

  it("--set name.param=sweep([...]) sweeps a param from the command line", async () => {
    const s = await runApi(sb, "example.ts", { overrides: ["sum.scale=sweep([1, 2, 3])"] })
    expect(s.status).toBe("succeeded")
    expect(count("sum")).toBe(6) // 2 starts x 3 scales
    expect(s.nodes.map((n) => n.name)).toContain("sum[generate.start=100,scale=3]")
    expect(await planError("example.ts", ["sum.scale=sweep([])"])).toContain("--set sum.scale=sweep([]): expected name.param=sweep([v1, v2, ...]) with a JSON array of values, for a top-level param")
    expect(await planError("example.ts", ["sum.scale=sweep(1, 2)"])).toContain("expected name.param=sweep([v1, v2, ...])")
  })

  it("a zip column used by a downstream call follows the upstream value instead of crossing with it", async () => {
    const file = writePipeline(
      sb,
      "zipped.ts",
      `import { pipeline, zip } from "@engine"
       import { generate, render, sum } from "@stages"
       const pair = zip({ start: [1, 100], title: ["low", "high"] })
       const total = sum({ scale: 1 }, { numbers: generate({ start: pair.start, n: 2 }) })
       export default pipeline("zipped", [render({ title: pair.title }, { total })])`,
    )
    const s = await runApi(sb, file)
    expect(s.status).toBe("succeeded")
    // two renders (low with start 1, high with start 100), not four
    expect(sb.traced().filter((l) => l.startsWith("render")).sort()).toEqual(["render high", "render low"])
    expect(s.nodes.map((n) => n.name).filter((n) => n.startsWith("render")).sort()).toEqual(["render[generate.start=100]", "render[generate.start=1]"])
  })
})

describe("failures", () => {
  it("skips dependents of a failed node, finishes independent ones, reports the log", async () => {
    const s = await runApi(sb, "failing.ts")
    expect(s.status).toBe("failed")
    const by = Object.fromEntries(s.nodes.map((n) => [n.name, n]))
    expect(by["render[title=bad,fail=true]"].status).toBe("failed")
    expect(by["render[title=bad,fail=true]"].error).toContain("asked to fail")
    expect(readFileSync(by["render[title=bad,fail=true]"].logPath!, "utf8")).toContain("asked to fail")
    expect(by["lines[render.title=bad,render.fail=true]"].status).toBe("skipped")
    expect(by["lines[render.title=good,render.fail=false]"].status).toBe("succeeded")
  })

  it("a child process killed mid-stage (as by the OOM killer) fails that node only", async () => {
    const s = await runApi(sb, "crashing.ts")
    const by = Object.fromEntries(s.nodes.map((n) => [n.name, n]))
    expect(by["crash"].status).toBe("failed")
    expect(by["crash"].error).toMatch(/child process exited with signal SIGKILL before publishing/)
    expect(by["sum"].status).toBe("skipped")
    expect(by["sum#2"].status).toBe("succeeded")
  })

  it("--fail-fast stops scheduling after the first failure", async () => {
    const s = await runApi(sb, "failing.ts", { failFast: true })
    expect(s.counts.failed).toBe(1)
    expect(s.nodes.find((n) => n.name === "lines[render.title=good,render.fail=false]")!.status).not.toBe("succeeded")
  })
})

describe("scheduling", () => {
  it("runs the longest remaining path first, spreads GPU nodes over the given GPUs, retries transient errors", async () => {
    const s = await runApi(sb, "scheduling.ts", { jobs: 1, gpus: [0, 1] })
    expect(s.status).toBe("succeeded")
    const t = sb.traced()
    // The chain's head (3 nodes to go) starts before the lone node declared ahead of it.
    expect(t.indexOf("generate 1 2")).toBeLessThan(t.indexOf("generate 500 1"))
    const gpuUse = t.filter((l) => l.startsWith("onGpu")).sort()
    expect(gpuUse).toHaveLength(4)
    expect(new Set(gpuUse)).toEqual(new Set(["onGpu 0", "onGpu 1"]))
    // Two transient failures, then success: three attempts in one execution.
    expect(t.filter((l) => l === "flaky")).toHaveLength(3)
  })

  it("without GPUs a GPU stage runs on the CPU; a non-transient error is not retried", async () => {
    const s = await runApi(sb, "scheduling.ts", { overrides: ["flaky.permanent=true"] })
    expect(sb.traced().filter((l) => l.startsWith("onGpu"))).toEqual(["onGpu cpu", "onGpu cpu", "onGpu cpu", "onGpu cpu"])
    expect(sb.traced().filter((l) => l === "flaky")).toHaveLength(1)
    expect(s.nodes.find((n) => n.name === "flaky")!.error).toBe("permanent failure")
  })
})

describe("integrity", () => {
  const objectOf = (hash: string) => join(sb.cacheDir, "objects", hash.slice(0, 2), hash)

  it("a payload corrupted in place (same size) is detected when read and recomputed", async () => {
    const first = await runApi(sb, "chain.ts")
    const render = first.nodes.find((n) => n.name === "render")!
    const path = objectOf(render.output!)
    const bytes = readFileSync(path)
    bytes[0] ^= 0xff
    writeFileSync(path, bytes)
    const before = sb.traced().length
    const s = await runApi(sb, "chain.ts", { rerun: ["counted"] })
    expect(s.status).toBe("succeeded")
    // `counted` found its input corrupt before running, so render reran, then counted.
    expect(sb.traced().slice(before)).toEqual(["render total", "lines"])
    expect(readFileSync(path, "utf8")).toBe("total: 55\n")
  })

  it("a truncated payload is not trusted as a cache hit", async () => {
    const first = await runApi(sb, "chain.ts")
    const render = first.nodes.find((n) => n.name === "render")!
    writeFileSync(objectOf(render.output!), "tot")
    const before = sb.traced().length
    await runApi(sb, "chain.ts")
    // render recomputes to identical bytes, so `counted` stays cached (early cutoff).
    expect(sb.traced().slice(before)).toEqual(["render total"])
  })

  it("a JSON value tampered with in SQLite is detected and recomputed", async () => {
    const first = await runApi(sb, "chain.ts")
    const sum = first.nodes.find((n) => n.name === "sum")!
    const store = new Store(sb.cacheDir)
    store.db.prepare("UPDATE artifacts SET json = ? WHERE hash = ?").run('{"count":10,"total":99}', sum.output)
    store.close()
    const before = sb.traced().length
    // The cache-hit check rehashes inline JSON: sum recomputes to the true value; downstream stays cached.
    const s = await runApi(sb, "chain.ts")
    expect(sb.traced().slice(before)).toEqual(["sum 1"])
    expect(s.nodes.find((n) => n.name === "sum")!.output).toBe(sum.output)
  })

  it("leaves no temp files and removes work dirs after publishing", async () => {
    await runApi(sb, "chain.ts")
    expect(readdirSync(join(sb.cacheDir, "tmp"))).toEqual([])
    expect(readdirSync(join(sb.cacheDir, "work"))).toEqual([])
  })
})

describe("external files", () => {
  it("enter by content: a touch is not a change, an edit is", async () => {
    const notes = join(sb.dir, "notes.txt")
    const file = writePipeline(
      sb,
      "notes.ts",
      `import { external, pipeline } from "@engine"
       import { lines } from "@stages"
       export default pipeline("notes", [lines({}, { text: external.file(${JSON.stringify(notes)}) })])`,
    )
    await runApi(sb, file)
    expect(sb.traced()).toEqual(["lines"])
    const future = new Date(Date.now() + 60_000)
    utimesSync(notes, future, future)
    await runApi(sb, file)
    expect(sb.traced()).toEqual(["lines"])
    writeFileSync(notes, "alpha\nbeta\ngamma\n")
    const s = await runApi(sb, file)
    expect(sb.traced()).toEqual(["lines", "lines"])
    expect(s.nodes[0].status).toBe("succeeded")
    // The content hash is remembered by (path, size, mtime, inode).
    const store = new Store(sb.cacheDir)
    const row = store.db.prepare("SELECT size FROM external_files WHERE path = ?").get(notes) as { size: number }
    expect(row.size).toBe(statSync(notes).size)
    store.close()
  })

  it("a missing external file is a clear error naming the path", async () => {
    const absent = join(sb.dir, "absent.jsonl")
    const file = writePipeline(
      sb,
      "absent.ts",
      `import { external, pipeline } from "@engine"
       import { lines } from "@stages"
       export default pipeline("absent", [lines({}, { text: external.file(${JSON.stringify(absent)}) })])`,
    )
    expect(await planError(file)).toBe(`external input ${absent} does not exist`)
  })
})

describe("bad input", () => {
  it("names pipeline, node, stage and field for invalid params", async () => {
    const message = await planError("chain.ts", ['generate.start="abc"'])
    expect(message).toContain("chain.ts")
    expect(message).toContain('node "generate"')
    expect(message).toContain('stage "generate"')
    expect(message).toContain('["start"]')
    expect(await planError("chain.ts", ["generate.n=0"])).toContain('["n"]')
  })

  it("rejects --set on unknown nodes or params", async () => {
    expect(await planError("chain.ts", ["nope.x=1"])).toContain('no node named "nope"')
    expect(await planError("chain.ts", ["sum.nope=1"])).toContain('has no param "nope"')
  })

  it("rejects --rerun of an unknown name", async () => {
    await expect(runApi(sb, "chain.ts", { rerun: ["nope"] })).rejects.toThrow(/--rerun nope: no node or stage of that name/)
  })

  it("explains unloadable pipeline files", async () => {
    expect(await planError("missing.ts")).toContain("no such pipeline file")
    expect(await planError("no-default.ts")).toContain("default export must be a pipeline")
    expect(await planError("throws.ts")).toContain("failed to load: dataset path not configured")
  })
})
