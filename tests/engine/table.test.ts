// Sweep tables: paths into JSON values, Markdown / CSV rendering, sorting and selection (checked
// against hand-written expected text), the sweep-table stage over a gather, and `pipe table` from
// a run's records and from a pipeline file, failed points marked.
import { readFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { beforeEach, describe, expect, it } from "vitest"
import { tableCommand } from "../../src/cli/table.ts"
import { Store } from "../../src/engine/index.ts"
import { csv, markdown, numericLeaves, pick, selectColumns, sortRows, type Table } from "../../src/engine/table.ts"
import { cli, fixture, runApi, sandbox, writePipeline, type Sandbox } from "./helpers.ts"

const comparison = { klReduction: 16.25, rows: [{ variant: "base", kl: 1.338 }, { variant: "baked", kl: 0.0823, behaviour: { rate: 0.97 } }] }

describe("table values", () => {
  it("picks by key, index and [field=value]; undefined where the path leads nowhere", () => {
    expect(pick(comparison, "klReduction")).toBe(16.25)
    expect(pick(comparison, "rows.1.kl")).toBe(0.0823)
    expect(pick(comparison, "rows[0].kl")).toBe(1.338)
    expect(pick(comparison, "rows[variant=baked].behaviour.rate")).toBe(0.97)
    expect(pick(comparison, "rows[variant=prompted].kl")).toBeUndefined()
    expect(pick(comparison, "rows.5.kl")).toBeUndefined()
    expect(pick(comparison, "klReduction.x")).toBeUndefined()
    expect(() => pick(comparison, "rows[0]kl")).toThrow('path "rows[0]kl": cannot read it at character 8')
  })

  it("lists the numbers of a value with their paths", () => {
    expect(numericLeaves(comparison)).toEqual([["klReduction", 16.25], ["rows.0.kl", 1.338], ["rows.1.kl", 0.0823], ["rows.1.behaviour.rate", 0.97]])
  })

  const table: Table = {
    columns: [{ name: "prompt" }, { name: "rank" }, { name: "kl", digits: 3 }, { name: "rate", percent: true }, { name: "ratio" }],
    rows: [
      { prompt: "blue", rank: 16, kl: 0.08234, rate: 0.97, ratio: 16.2549 },
      { prompt: 'say "a|b", then\nstop', rank: 4, kl: 0.1, rate: null, ratio: 3 },
      { prompt: "caps", rank: 4, kl: 0.5, rate: 0.5, ratio: 1 / 3 },
    ],
  }

  it("renders Markdown with formats and escapes, CSV with full values and quoting", () => {
    expect(markdown(table, "Sweep")).toBe(
      [
        "# Sweep",
        "",
        "| prompt | rank | kl | rate | ratio |",
        "| --- | --- | --- | --- | --- |",
        "| blue | 16 | 0.082 | 97.0% | 16.25 |",
        '| say "a\\|b", then stop | 4 | 0.100 | - | 3 |',
        "| caps | 4 | 0.500 | 50.0% | 0.3333 |",
        "",
      ].join("\n"),
    )
    expect(csv(table)).toBe(['prompt,rank,kl,rate,ratio', "blue,16,0.08234,0.97,16.2549", '"say ""a|b"", then\nstop",4,0.1,,3', `caps,4,0.5,0.5,${1 / 3}`, ""].join("\r\n"))
  })

  it("sorts by several keys (descending with -, empty cells last) and selects columns", () => {
    expect(sortRows(table, ["rank", "-kl"]).rows.map((r) => r.prompt)).toEqual(["caps", 'say "a|b", then\nstop', "blue"])
    expect(sortRows(table, ["-rate"]).rows.map((r) => r.rate)).toEqual([0.97, 0.5, null])
    expect(sortRows(table, ["rate"]).rows.map((r) => r.rate)).toEqual([0.5, 0.97, null])
    expect(selectColumns(table, ["kl", "prompt"]).columns.map((c) => c.name)).toEqual(["kl", "prompt"])
    expect(() => sortRows(table, ["-loss"])).toThrow('sort key "loss": no such column (columns: prompt, rank, kl, rate, ratio)')
  })
})

let sb: Sandbox
beforeEach(() => {
  sb = sandbox()
})

const tablePipeline = () =>
  writePipeline(
    sb,
    "table.ts",
    `import { gather, pipeline, sweep } from "@engine"
     import { point } from ${JSON.stringify(fixture("gather.ts"))}
     import { publishTable, sweepTable } from ${JSON.stringify(resolve(import.meta.dirname, "../../stages/table.ts"))}
     const points = point({ x: sweep([1, 2, 3]), y: sweep(["a", "bb"]) })
     const table = sweepTable({ title: "Points", columns: [{ name: "score", path: "score" }, { name: "label", path: "detail.label" }], sort: ["-score"] }, { points: gather(points) })
     export default pipeline("table", { table }, { publish: publishTable(table, "points"), print: ["points.md"] })`,
  )

const pipeTable = async (positional: ReadonlyArray<string>, options: Record<string, ReadonlyArray<string>> = {}) => {
  const store = new Store(sb.cacheDir)
  let text = ""
  try {
    await tableCommand({ positional, options: new Map(Object.entries(options)) }, store, sb.runsDir, (t) => (text += t))
    return text
  } finally {
    store.close()
  }
}

describe("sweep-table stage and pipe table", () => {
  it("publishes the gathered points as Markdown, CSV and JSON, sorted as asked", async () => {
    const s = await runApi(sb, tablePipeline())
    expect(s.status).toBe("succeeded")
    const md = ["# Points", "", "| x | y | score | label |", "| --- | --- | --- | --- |", "| 3 | bb | 32 | bb3 |", "| 3 | a | 31 | a3 |", "| 2 | bb | 22 | bb2 |", "| 2 | a | 21 | a2 |", "| 1 | bb | 12 | bb1 |", "| 1 | a | 11 | a1 |", ""].join("\n")
    expect(readFileSync(join(s.runDir, "points.md"), "utf8")).toBe(md)
    expect(readFileSync(join(s.runDir, "points.csv"), "utf8").split("\r\n").slice(0, 3)).toEqual(["x,y,score,label", "3,bb,32,bb3", "3,a,31,a3"])
    const json = JSON.parse(readFileSync(join(s.runDir, "points.json"), "utf8"))
    expect(json.rows[0]).toEqual({ x: 3, y: "bb", score: 32, label: "bb3" })
    expect(Object.keys(json).sort()).toEqual(["columns", "rows", "title"])

    // pipe table <run> prints the run's sweep table; sort and columns re-shape it
    expect(await pipeTable([s.runId])).toBe(md)
    expect(await pipeTable([s.runId], { "--columns": ["y,score"], "--sort": ["y,score"], "--format": ["csv"] })).toBe(
      ["y,score", "a,11", "a,21", "a,31", "bb,12", "bb,22", "bb,32", ""].join("\r\n"),
    )
  })

  it("a column path that finds nothing fails the stage with the column, path and point", async () => {
    const file = tablePipeline()
    const broken = writePipeline(sb, "broken.ts", readFileSync(file, "utf8").replace('path: "detail.label"', 'path: "detail.name"'))
    const s = await runApi(sb, broken)
    expect(s.nodes.find((n) => n.name === "sweep-table")!.error).toContain('column "label": nothing at "detail.name" in the output of the point {"x":1,"y":"a"}')
  })

  it("pipe table <pipeline> <call> lists each instance's coordinates, numbers and final metrics, and marks missing points", async () => {
    const file = fixture("gather.ts")
    await runApi(sb, file, { overrides: ["point.failAt=2"] })
    const text = await pipeTable([file, "point"], { "--sort": ["-x"] })
    // the output's own "x" is hidden by the coordinate of that name
    expect(text).toBe(["| x | status | score | loss |", "| --- | --- | --- | --- |", "| 3 | ok | 32 | 0.3333 |", "| 2 | failed | - | - |", "| 1 | ok | 12 | 1 |", ""].join("\n"))
    expect(await pipeTable([file, "point"], { "--columns": ["x,detail.label,loss"], "--format": ["csv"] })).toBe(["x,detail.label,loss", "1,ab1,1", "2,,", "3,ab3,0.3333333333333333", ""].join("\r\n"))
    await expect(pipeTable([file, "point"], { "--columns": ["x,nope"] })).rejects.toThrow('column "nope": not a coordinate, metric or value of point (coordinates: x; metrics: loss; numbers: score, x)')
    await expect(pipeTable([file, "nothing"])).rejects.toThrow(`no call named "nothing" in ${file} (calls: point, collect)`)
  })

  it("the pipe command takes the options (a descending sort key after --sort is its value, not an option)", async () => {
    const file = fixture("gather.ts")
    await runApi(sb, file)
    const ok = await cli(sb, ["table", file, "point", "--sort", "-score", "--columns", "x,score", "--format", "csv"])
    expect([ok.code, ok.stdout]).toEqual([0, ["x,score", "3,32", "2,22", "1,12", ""].join("\r\n")])
    const bad = await cli(sb, ["table", file, "--format", "xml"])
    expect([bad.code, bad.stderr]).toEqual([2, "pipe: --format expects md, csv or json, got xml\n"])
  }, 60_000)
})
