// The `pipe` command as users run it: real processes on a shared cache directory, killed with
// SIGKILL or SIGINT mid-run, racing each other, and the inspection commands.
import Database from "better-sqlite3"
import { spawnSync } from "node:child_process"
import { cpSync, existsSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { beforeEach, describe, expect, it } from "vitest"
import { cli, fixture, sandbox, startCli, until, writePipeline, type Sandbox } from "./helpers.ts"

const repo = resolve(import.meta.dirname, "../..")

let sb: Sandbox
beforeEach(() => {
  sb = sandbox()
})

const db = () => new Database(join(sb.cacheDir, "cache.sqlite"), { readonly: true })
const query = <T>(sql: string, ...args: Array<unknown>): Array<T> => {
  const d = db()
  try {
    return d.prepare(sql).all(...args) as Array<T>
  } finally {
    d.close()
  }
}
/** The step saved in train's checkpoint (its work dir is keyed by the cache key), if any. */
const checkpointStep = (): number | undefined => {
  const work = join(sb.cacheDir, "work")
  if (!existsSync(work)) return undefined
  for (const key of readdirSync(work)) {
    const f = join(work, key, "checkpoint.json")
    if (existsSync(f)) return (JSON.parse(readFileSync(f, "utf8")) as { step: number }).step
  }
  return undefined
}

describe("interrupted runs", () => {
  it("SIGKILL in the middle of a stage, then a clean resume from its checkpoint", async () => {
    const gate = join(sb.dir, "gate")
    const first = startCli(sb, ["run", fixture("train.ts"), "--plain"], { PIPE_TEST_GATE: gate })
    await until("train to checkpoint half way", () => checkpointStep() === 10)
    first.child.kill("SIGKILL")
    expect((await first.done).signal).toBe("SIGKILL")
    // Nothing of train was published.
    expect(query("SELECT * FROM artifacts WHERE type = 'Vectors'")).toEqual([])

    writeFileSync(gate, "")
    const second = await cli(sb, ["run", fixture("train.ts"), "--plain"], { PIPE_TEST_GATE: gate })
    expect(second.stderr).toBe("")
    expect(second.code).toBe(0)
    expect(second.stdout).toMatch(/2 ran, 1 cached/)
    expect(sb.traced()).toEqual(["generate 1 5", "train start step=0", "train start step=10"])
    const [summary] = query<{ json: string }>("SELECT json FROM artifacts WHERE type = 'Total'")
    expect(JSON.parse(summary.json).count).toBe(20)
    // The killed run's temp files are gone and the finished node's checkpoint dir was removed.
    expect(readdirSync(join(sb.cacheDir, "tmp"))).toEqual([])
    expect(readdirSync(join(sb.cacheDir, "work"))).toEqual([])
  })

  it("a running node's metrics reach the cache and metrics.jsonl within seconds, not at its end", async () => {
    const gate = join(sb.dir, "gate")
    const run = startCli(sb, ["run", fixture("train.ts"), "--plain"], { PIPE_TEST_GATE: gate })
    await until("train to checkpoint half way", () => checkpointStep() === 10)
    // train waits at its gate after 10 of its 20 metrics: far fewer than a batch, written after 2 s
    const jsonl = () => readdirSync(sb.runsDir).flatMap((r) => (existsSync(join(sb.runsDir, r, "metrics.jsonl")) ? readFileSync(join(sb.runsDir, r, "metrics.jsonl"), "utf8").trim().split("\n") : []))
    await until("the waiting node's metrics to be recorded", () => jsonl().length === 10, 10_000)
    expect(query<{ n: number }>("SELECT count(*) AS n FROM metrics WHERE name = 'w'")).toEqual([{ n: 10 }])
    writeFileSync(gate, "")
    expect((await run.done).code).toBe(0)
    expect(query<{ n: number }>("SELECT count(*) AS n FROM metrics WHERE name = 'w'")).toEqual([{ n: 20 }])
    expect(jsonl().map((l) => JSON.parse(l).step)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1))
  })

  it("Ctrl-C stops cleanly: exit 130, the run is recorded as interrupted, the next run resumes", async () => {
    const gate = join(sb.dir, "gate")
    const first = startCli(sb, ["run", fixture("train.ts"), "--plain"], { PIPE_TEST_GATE: gate })
    await until("train to checkpoint half way", () => checkpointStep() === 10)
    first.child.kill("SIGINT")
    const r = await first.done
    expect(r.code).toBe(130)
    expect(r.stdout).toMatch(/interrupted/)
    expect(query<{ status: string }>("SELECT status FROM runs")).toEqual([{ status: "interrupted" }])
    expect(query<{ status: string }>("SELECT status FROM executions WHERE stage = 'train'")).toEqual([{ status: "interrupted" }])
    expect(query("SELECT * FROM claims")).toEqual([])

    writeFileSync(gate, "")
    const second = await cli(sb, ["run", fixture("train.ts"), "--plain"], { PIPE_TEST_GATE: gate })
    expect(second.code).toBe(0)
    expect(sb.traced().at(-1)).toBe("train start step=10")
  })
})

describe("concurrent runs", () => {
  it("two pipe run processes on one cache never compute the same key twice", async () => {
    const gate = join(sb.dir, "gate")
    const env = { PIPE_TEST_GATE: gate }
    const a = startCli(sb, ["run", fixture("example.ts"), "--plain", "--jobs", "2"], env)
    await until("run A to start a sum", () => sb.traced().some((l) => l.startsWith("sum")))
    const b = startCli(sb, ["run", fixture("example.ts"), "--plain", "--jobs", "2"], env)
    await until("run B to wait for A's claim", () => b.output().includes("waiting"))
    writeFileSync(gate, "")
    const [ra, rb] = await Promise.all([a.done, b.done])
    expect(ra.code).toBe(0)
    expect(rb.code).toBe(0)
    const perKey = query<{ key: string; n: number }>("SELECT key, count(*) AS n FROM executions WHERE status = 'succeeded' GROUP BY key")
    expect(perKey).toHaveLength(12)
    expect(perKey.every((r) => r.n === 1)).toBe(true)
    expect(sb.traced().filter((l) => l.startsWith("sum"))).toHaveLength(4)
  })
})

describe("commands", () => {
  it("run, --dry-run, status, ls, show, logs, why, gc", async () => {
    const chain = fixture("chain.ts")
    const run1 = await cli(sb, ["run", chain, "--plain"])
    expect(run1.code).toBe(0)
    const runId = /run (\S+) succeeded/.exec(run1.stdout)![1]

    const dry = await cli(sb, ["run", chain, "--dry-run", "--set", "modulo.mod=200"])
    expect(dry.stdout).toMatch(/^cached +generate$/m)
    expect(dry.stdout).toMatch(/^to run +modulo +param mod: 100 -> 200$/m)
    expect(dry.stdout).toMatch(/^pending +sum +after modulo/m)
    expect(sb.traced()).toHaveLength(6) // a dry run runs nothing

    await cli(sb, ["run", chain, "--plain", "--set", "modulo.mod=200"])
    const why = await cli(sb, ["why", "modulo"])
    expect(why.stdout).toContain("param mod: 100 -> 200")

    const status = await cli(sb, ["status", chain, "--set", "modulo.mod=300"])
    expect(status.stdout).toMatch(/^cached +generate$/m)
    expect(status.stdout).toMatch(/^stale +modulo +param mod: 200 -> 300$/m)

    const ls = await cli(sb, ["ls"])
    expect(ls.stdout).toContain(runId)
    const show = await cli(sb, ["show", runId])
    expect(show.stdout).toMatch(/succeeded .* render/)
    const node = await cli(sb, ["show", "sum"])
    expect(node.stdout).toMatch(/metric +total = 55/)
    const logs = await cli(sb, ["logs", "sum"])
    expect(logs.stdout).toContain("summed 10 numbers")

    const gc = await cli(sb, ["gc"])
    expect(gc.code).toBe(0)
    expect(gc.stdout).toMatch(/removed \d+ unreferenced payload files and \d+ work directories of interrupted nodes, freed [\d.]+ MiB/)
  })

  it("status reports stages whose source changed since their cached result", async () => {
    const body = (comment: string) => `// ${comment}
      import { Effect, Schema } from "effect"
      import { Artifact, pipeline, stage } from "@engine"
      const hello = stage({ name: "hello", version: 1, params: Schema.Struct({}), inputs: {}, output: Artifact.json("Greeting", Schema.String),
        run: () => Effect.succeed("hello") })
      export default pipeline("hello", [hello({})])`
    const file = writePipeline(sb, "hello.ts", body("v1"))
    expect((await cli(sb, ["run", file, "--plain"])).code).toBe(0)
    writePipeline(sb, "hello.ts", body("edited"))
    const status = await cli(sb, ["status", file])
    expect(status.stdout).toMatch(/^cached +hello +cached, but the stage's source changed since \(use --rerun\)$/m)
  })

  it("status also sees an edit to a local module the stage's file imports", async () => {
    const helper = (word: string) => writeFileSync(join(sb.dir, "words.ts"), `export const word = ${JSON.stringify(word)}\n`)
    helper("hello")
    const file = writePipeline(
      sb,
      "greet.ts",
      `import { Effect, Schema } from "effect"
      import { Artifact, pipeline, stage } from "@engine"
      import { word } from "./words.ts"
      const greet = stage({ name: "greet", version: 1, params: Schema.Struct({}), inputs: {}, output: Artifact.json("Greeting", Schema.String),
        run: () => Effect.succeed(word) })
      export default pipeline("greet", [greet({})])`,
    )
    expect((await cli(sb, ["run", file, "--plain"])).code).toBe(0)
    expect((await cli(sb, ["status", file])).stdout).toMatch(/^cached +greet *$/m)
    helper("bonjour")
    expect((await cli(sb, ["status", file])).stdout).toMatch(/^cached +greet +cached, but the stage's source changed since \(use --rerun\)$/m)
  })

  it("failures: summary with log paths and exit code 1; bad params: message and exit code 2", async () => {
    const failed = await cli(sb, ["run", fixture("failing.ts"), "--plain"])
    expect(failed.code).toBe(1)
    expect(failed.stdout).toContain("failures:\n  render[title=bad,fail=true]: render bad: asked to fail\n")
    const logPath = /^    log: (\S+)$/m.exec(failed.stdout)![1]
    expect(readFileSync(logPath, "utf8")).toContain("asked to fail")

    const bad = await cli(sb, ["run", fixture("chain.ts"), "--set", "generate.n=-3"])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain('chain.ts (pipeline "chain"): node "generate" (stage "generate"): invalid params')
    expect(bad.stderr).toContain('at ["n"]')
    expect(bad.stderr).not.toMatch(/^\s+at .*\.ts:\d+/m) // no stack trace

    const usage = await cli(sb, ["run"])
    expect(usage.code).toBe(2)
    expect(usage.stderr).toContain("pipe run expects a pipeline file")
  })
})


describe("usage", () => {
  it("--help lists every command; unknown commands and options are usage errors (exit 2)", async () => {
    const help = await cli(sb, ["--help"])
    expect(help.code).toBe(0)
    for (const c of ["run", "status", "ls", "show", "logs", "why", "gc", "doctor"]) expect(help.stdout).toMatch(new RegExp(`^  ${c} `, "m"))
    expect((await cli(sb, ["ls", "--help"])).stdout).toBe(help.stdout)
    expect((await cli(sb, [])).stdout).toBe(help.stdout)

    const unknown = await cli(sb, ["frobnicate"])
    expect([unknown.code, unknown.stderr]).toEqual([2, 'pipe: unknown command "frobnicate"\nrun pipe --help for usage\n'])
    // Each command takes only its own options (and --cache-dir, --runs-dir).
    const wrong = await cli(sb, ["ls", "--plain"])
    expect([wrong.code, wrong.stderr]).toEqual([2, "pipe: unknown option --plain for pipe ls\nrun pipe --help for usage\n"])
    const limit = await cli(sb, ["ls", "--limit=0"])
    expect([limit.code, limit.stderr]).toEqual([2, "pipe: --limit expects a positive integer, got 0\nrun pipe --help for usage\n"])
    expect((await cli(sb, ["ls", "--limit", "3", `--cache-dir=${sb.cacheDir}`])).code).toBe(0)
  })
})

describe("the compiled CLI", () => {
  it("a pipeline file's imports of src/ are the very modules the CLI runs (one engine, not a second copy through tsx)", async () => {
    const file = writePipeline(
      sb,
      "identity.ts",
      `import { Effect, Schema } from "effect"
      import { Artifact, pipeline, stage, Store } from "@engine"
      import { ParamsError } from ${JSON.stringify(join(repo, "src/engine/errors.ts"))}
      // What bin/pipe.js runs: the compiled engine.
      const cli = await import(${JSON.stringify(join(repo, "dist/src/engine/index.js"))})
      const probe = stage({ name: "probe", version: 1, params: Schema.Struct({}), inputs: {}, output: Artifact.json("Same", Schema.Array(Schema.Boolean)),
        run: () => Effect.succeed([Store === cli.Store, ParamsError === cli.ParamsError, stage === cli.stage]) })
      export default pipeline("identity", [probe({})])`,
    )
    const r = await cli(sb, ["run", file, "--plain"])
    expect(r.code).toBe(0)
    const [row] = query<{ json: string }>("SELECT json FROM artifacts WHERE type = 'Same'")
    expect(JSON.parse(row.json)).toEqual([true, true, true])
  })

  it("dist/ is rebuilt when a source changes; when src/ does not compile, pipe runs from source", () => {
    // A copy of the parts of the checkout the CLI needs, so editing its sources disturbs no other test.
    const copy = sandbox().dir
    for (const part of ["bin", "src", "package.json"]) cpSync(join(repo, part), join(copy, part), { recursive: true })
    symlinkSync(join(repo, "node_modules"), join(copy, "node_modules"))
    const pipe = (...args: Array<string>) => spawnSync(process.execPath, [join(copy, "bin/pipe.js"), ...args], { cwd: copy, encoding: "utf8" })
    const help = () => pipe("--help")
    const edit = (file: string, from: string, to: string) => writeFileSync(join(copy, file), readFileSync(join(copy, file), "utf8").replace(from, to))

    expect(help().stdout).toContain("ls [--limit N]        recent runs")
    expect(existsSync(join(copy, "dist/src/cli/main.js"))).toBe(true)
    edit("src/cli/main.ts", "recent runs", "the latest runs")
    expect(help().stdout).toContain("ls [--limit N]        the latest runs")

    // Commands are loaded when they run: with the store failing at import, --help still answers.
    edit("src/engine/store.ts", "import Database", 'throw new Error("store.ts was imported")\nimport Database')
    expect(help().stdout).toContain("the latest runs")
    const ls = pipe("ls")
    expect([ls.status, ls.stderr]).toEqual([2, "pipe: store.ts was imported\n"])

    edit("src/engine/hash.ts", "export const", "export const const")
    const broken = help()
    expect(broken.status).toBe(0)
    expect(broken.stderr).toMatch(/^pipe: could not build dist\/ \(running the sources through tsx instead\): .*hash\.ts/)
    expect(broken.stdout).toContain("the latest runs")
  })
})
