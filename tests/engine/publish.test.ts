// Named external inputs (`--set model.path=...`) and results published into the run folder
// (`publish`, `print`), through real runs on a real SQLite cache and a real `pipe` process.
import { Effect } from "effect"
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs"
import { join, relative } from "node:path"
import { beforeEach, describe, expect, it } from "vitest"
import { Store, planFile } from "../../src/engine/index.ts"
import { cli, runApi, sandbox, writePipeline, type Sandbox } from "./helpers.ts"

let sb: Sandbox
let notes: string
let other: string
beforeEach(() => {
  sb = sandbox()
  notes = join(sb.dir, "notes.txt")
  other = join(sb.dir, "other.txt")
  writeFileSync(notes, "alpha\nbe\n")
  writeFileSync(other, "abc\nde\nf\n")
})

const planError = async (file: string, overrides: ReadonlyArray<string> = []) => {
  const store = new Store(sb.cacheDir)
  try {
    return (await Effect.runPromise(Effect.flip(planFile(store, file, overrides)))).message
  } finally {
    store.close()
  }
}

/** `lines` counts the line lengths of an external file named "notes"; `echo` reads it in a child process. */
const notesPipeline = () =>
  writePipeline(
    sb,
    "notes.ts",
    `import { readFileSync } from "node:fs"
     import { Effect, Schema } from "effect"
     import { Artifact, File, external, pipeline, stage } from "@engine"
     import { lines } from "@stages"
     const echo = stage({
       name: "echo", version: 1, params: Schema.Struct({}), inputs: { text: File },
       output: Artifact.json("Echo", Schema.Struct({ path: Schema.String, text: Schema.String, pid: Schema.Number })),
       resources: { isolate: "process" },
       run: ({ inputs }) => Effect.sync(() => ({ path: inputs.text.path, text: readFileSync(inputs.text.path, "utf8"), pid: process.pid })),
     })
     const text = external.file(${JSON.stringify(notes)}, { name: "notes" })
     export default pipeline("notes", { counted: lines({}, { text }), echoed: echo({}, { text }) })`,
  )

const jsonOf = (path: string) => JSON.parse(readFileSync(path, "utf8"))

describe("named external inputs", () => {
  it("--set notes.path=... replaces the path: new hash, new result, also in a child process", async () => {
    const file = notesPipeline()
    const first = await runApi(sb, file)
    expect(first.status).toBe("succeeded")
    // A path relative to the current directory, as a user types it.
    const second = await runApi(sb, file, { overrides: [`notes.path=${relative(process.cwd(), other)}`] })
    expect(second.status).toBe("succeeded")
    expect(second.counts).toMatchObject({ succeeded: 2, cached: 0 })
    expect(sb.traced()).toEqual(["lines", "lines"])

    const node = (s: typeof first, name: string) => s.nodes.find((n) => n.name === name)!
    expect(node(second, "lines").key).not.toBe(node(first, "lines").key)
    const store = new Store(sb.cacheDir)
    const value = (s: typeof first, name: string) => JSON.parse(store.readJson(node(s, name).output!))
    expect(value(first, "lines")).toEqual([5, 2])
    expect(value(second, "lines")).toEqual([3, 2, 1])
    // The process-isolated stage replanned with the override and was handed the overridden file.
    const echoed = value(second, "echo")
    expect(echoed).toMatchObject({ path: other, text: "abc\nde\nf\n" })
    expect(echoed.pid).not.toBe(process.pid)
    store.close()

    const plan = jsonOf(join(second.runDir, "plan.json"))
    expect(plan.externals).toEqual([{ name: "notes", path: other, hash: expect.stringMatching(/^[0-9a-f]{64}$/) }])
    expect(plan.nodes.find((n: { name: string }) => n.name === "lines").inputs).toEqual({ text: other })
  })

  it("--dry-run shows the resolved path", async () => {
    const dry = await cli(sb, ["run", notesPipeline(), "--dry-run", "--set", `notes.path=${other}`])
    expect(dry.stderr).toBe("")
    expect(dry.stdout).toMatch(new RegExp(`^external notes +${other}$`, "m"))
    expect(dry.stdout).toMatch(/^to run +lines +never run$/m)
  })

  it("rejects fields other than path, unknown names, and ambiguous names", async () => {
    const file = notesPipeline()
    expect(await planError(file, ["notes.size=3"])).toContain('--set notes.size=3: "notes" is an external input; its one settable field is "path"')
    expect(await planError(file, ["nope.path=x"])).toContain('no node named "nope" (nodes: lines, echo; external inputs: notes)')
    expect(await planError(file, ["notes.path=/no/such/notes.txt"])).toContain('external input /no/such/notes.txt does not exist (external input "notes"; set it with --set notes.path=...)')
    const clash = writePipeline(
      sb,
      "clash.ts",
      `import { external, pipeline } from "@engine"
       import { lines } from "@stages"
       export default pipeline("clash", [lines({}, { text: external.file(${JSON.stringify(notes)}, { name: "lines" }) })])`,
    )
    expect(await planError(clash)).toContain(`"lines" names both a stage call and the external input ${notes}`)
    const twice = writePipeline(
      sb,
      "twice.ts",
      `import { external, pipeline } from "@engine"
       import { lines } from "@stages"
       const a = lines({}, { text: external.file(${JSON.stringify(notes)}, { name: "text" }) })
       const b = lines({}, { text: external.file(${JSON.stringify(other)}, { name: "text" }) }, { name: "b" })
       export default pipeline("twice", [a, b])`,
    )
    expect(await planError(twice)).toContain(`two external inputs are named "text" with different paths (${notes}, ${other})`)
  })
})

/** generate -> sum (swept over `scale` when asked) -> render; sum and render are published. */
const publishPipeline = (scale: string) =>
  writePipeline(
    sb,
    "published.ts",
    `import { pipeline, sweep } from "@engine"
     import { generate, render, sum } from "@stages"
     const total = sum({ scale: ${scale} }, { numbers: generate({ start: 1, n: 4 }) })
     const report = render({ title: "t" }, { total })
     export default pipeline("published", {}, {
       publish: { "total.json": total, "total.txt": { from: total, as: (t) => "total " + t.total + " of " + t.count }, "report.txt": report },
       print: ["total.txt"],
     })`,
  )

describe("publishing into the run folder", () => {
  it("writes JSON, rendered text and file payloads, on a fully cached rerun too", async () => {
    const file = publishPipeline("2")
    const first = await runApi(sb, file)
    const second = await runApi(sb, file)
    expect(second.counts).toMatchObject({ cached: 3, succeeded: 0 })
    for (const s of [first, second]) {
      expect(jsonOf(join(s.runDir, "total.json"))).toEqual({ total: 20, count: 4 })
      // Pretty-printed from the stored canonical JSON (sorted keys).
      expect(readFileSync(join(s.runDir, "total.json"), "utf8")).toBe('{\n  "count": 4,\n  "total": 20\n}\n')
      expect(readFileSync(join(s.runDir, "total.txt"), "utf8")).toBe("total 20 of 4")
      expect(readFileSync(join(s.runDir, "report.txt"), "utf8")).toBe("t: 20\n")
    }
    expect(jsonOf(join(second.runDir, "summary.json")).published).toEqual([
      { file: "total.json", node: "sum", path: join(second.runDir, "total.json"), print: false },
      { file: "total.txt", node: "sum", path: join(second.runDir, "total.txt"), print: true },
      { file: "report.txt", node: "render", path: join(second.runDir, "report.txt"), print: false },
    ])
  })

  it("a swept node writes one file per instance; failed instances write nothing", async () => {
    const file = writePipeline(
      sb,
      "swept.ts",
      `import { pipeline, sweep, zip } from "@engine"
       import { generate, render, sum } from "@stages"
       const total = sum({ scale: sweep([1, 2]) }, { numbers: generate({ start: 1, n: 4 }) })
       const report = render({ ...zip({ title: ["a/b", "c"], fail: [false, true] }) }, { total })
       export default pipeline("swept", {}, { publish: { "total.json": total, "report.txt": report } })`,
    )
    const s = await runApi(sb, file)
    expect(s.counts).toMatchObject({ succeeded: 5, failed: 2 })
    expect(readdirSync(s.runDir).filter((f) => f !== "logs").sort()).toEqual([
      "metrics.jsonl",
      "plan.json",
      "progress.json",
      "report[sum.scale=1,title=a_b,fail=false].txt",
      "report[sum.scale=2,title=a_b,fail=false].txt",
      "summary.json",
      "total[scale=1].json",
      "total[scale=2].json",
    ])
    expect(jsonOf(join(s.runDir, "total[scale=2].json"))).toEqual({ total: 20, count: 4 })
    expect(readFileSync(join(s.runDir, "report[sum.scale=2,title=a_b,fail=false].txt"), "utf8")).toBe("a/b: 20\n")
    expect(s.published.every((f) => "path" in f)).toBe(true)
  })

  it("write makes a directory per instance from the payload file and the node's external inputs; a throw fails the run", async () => {
    const file = writePipeline(
      sb,
      "written.ts",
      `import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
       import { join } from "node:path"
       import { Effect, Schema } from "effect"
       import { Artifact, File, external, pipeline, stage, sweep } from "@engine"
       const tag = stage({
         name: "tag", version: 1, params: Schema.Struct({ tag: Schema.String }), inputs: { text: File }, output: Artifact.file("Tagged"),
         run: ({ params, inputs }) => Effect.sync(() => new TextEncoder().encode(params.tag + ":" + readFileSync(inputs.text.path, "utf8"))),
       })
       const tagged = tag({ tag: sweep(["ok", "boom"]) }, { text: external.file(${JSON.stringify(notes)}, { name: "notes" }) })
       const write = ({ payload, externals }, target) => {
         if (readFileSync(payload, "utf8").startsWith("boom")) throw new Error("refusing " + payload)
         mkdirSync(target)
         writeFileSync(join(target, "copy.txt"), readFileSync(payload))
         writeFileSync(join(target, "externals.json"), JSON.stringify(externals))
       }
       export default pipeline("written", {}, { publish: { tagged: { from: tagged, write } } })`,
    )
    const s = await runApi(sb, file)
    expect(s.counts).toMatchObject({ succeeded: 2 })
    const dir = join(s.runDir, "tagged[tag=ok]")
    expect(readFileSync(join(dir, "copy.txt"), "utf8")).toBe("ok:alpha\nbe\n")
    expect(jsonOf(join(dir, "externals.json"))).toEqual({ text: notes })
    expect(s.published.find((f) => f.node === "tag[tag=ok]")).toEqual({ file: "tagged", node: "tag[tag=ok]", path: dir, print: false })
    expect(s.status).toBe("failed")
    expect(s.published.find((f) => f.node === "tag[tag=boom]")).toMatchObject({ error: expect.stringMatching(/^publish tagged from tag\[tag=boom\]: refusing .*cache/) })
    expect(existsSync(join(s.runDir, "tagged[tag=boom]"))).toBe(false)

    const json = writePipeline(
      sb,
      "json-write.ts",
      `import { pipeline } from "@engine"
       import { generate } from "@stages"
       export default pipeline("j", {}, { publish: { numbers: { from: generate({ start: 1, n: 2 }), write: () => {} } } })`,
    )
    expect(await planError(json)).toContain('publish "numbers": "write" reads a stored payload file; generate outputs json (use "as" for JSON values)')
  })

  it("pipe run prints the files named in print after its summary", async () => {
    const single = await cli(sb, ["run", publishPipeline("2"), "--plain"])
    expect(single.code).toBe(0)
    expect(single.stdout).toMatch(/^records: \S+\n\ntotal 20 of 4\n$/m)

    const swept = await cli(sb, ["run", publishPipeline("sweep([1, 3])"), "--plain"])
    expect(swept.code).toBe(0)
    const runDir = /^records: (\S+)$/m.exec(swept.stdout)![1]
    expect(swept.stdout.slice(swept.stdout.indexOf("records:"))).toBe(
      `records: ${runDir}\n\n== sum[scale=1] (${join(runDir, "total[scale=1].txt")}) ==\ntotal 10 of 4\n\n== sum[scale=3] (${join(runDir, "total[scale=3].txt")}) ==\ntotal 30 of 4\n`,
    )
    expect(existsSync(join(runDir, "report[sum.scale=3].txt"))).toBe(true)
  })
})
