// The engine under real, hostile conditions: a disk that fills up under the cache or under runs/,
// non-finite metrics, runs killed without a word, a truncated or garbled cache database, a cache this
// user cannot write, payloads damaged behind the engine's back.
import Database from "better-sqlite3"
import { Effect } from "effect"
import { execFileSync } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from "node:fs"
import { hostname } from "node:os"
import { join, resolve } from "node:path"
import { beforeEach, describe, expect, it, type TestContext } from "vitest"
import { doctorCache } from "../../src/engine/cache-doctor.ts"
import { CacheError, lineReporter, planFile, runPipeline, Store } from "../../src/engine/index.ts"
import { cli, fixture, runApi, sandbox, startCli, until, type CliResult, type Sandbox } from "./helpers.ts"

let sb: Sandbox
beforeEach(() => {
  sb = sandbox()
})

const query = <T>(sql: string, ...args: Array<unknown>): Array<T> => {
  const d = new Database(join(sb.cacheDir, "cache.sqlite"), { readonly: true })
  try {
    return d.prepare(sql).all(...args) as Array<T>
  } finally {
    d.close()
  }
}

/** Runs through the API with plain progress lines collected (what `pipe run --plain` prints). */
const runWithLines = async (file: string, rerun: ReadonlyArray<string> = []) => {
  const lines: Array<string> = []
  const store = new Store(sb.cacheDir)
  try {
    const result = await Effect.runPromise(
      runPipeline({ store, pipelineFile: fixture(file), runsDir: sb.runsDir, reporter: lineReporter((l) => lines.push(l)), rerun }),
    )
    return { result, lines }
  } finally {
    store.close()
  }
}

/**
 * Runs `pipe run disk-full.ts` with a tmpfs of `size` mounted at `dir`, which its first stage fills up;
 * then `after` (the tmpfs is still mounted, the filler removed). Skips the test where this process may
 * not mount (not root, no CAP_SYS_ADMIN).
 */
const onFullTmpfs = async (ctx: TestContext, dir: string, size: string, after: (r: CliResult, runDir: string) => Promise<void>) => {
  mkdirSync(dir, { recursive: true })
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { stdio: "pipe" })
  } catch {
    return ctx.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN); to reproduce by hand, mount one and point PIPE_CACHE_DIR or PIPE_RUNS_DIR at it")
  }
  try {
    const filler = join(dir, "filler")
    const r = await cli(sb, ["run", fixture("disk-full.ts"), "--plain"], { PIPE_TEST_FILL: filler })
    expect(r.stderr).toBe("") // no crash of the CLI
    expect(r.code).toBe(1)
    const runDir = /^records: (\S+)$/m.exec(r.stdout)![1]
    rmSync(filler)
    await after(r, runDir)
  } finally {
    execFileSync("umount", [dir])
  }
}

describe("non-finite metrics", () => {
  it("are recorded (NaN, ±Infinity), shown by pipe show, and the stage's own error is kept", async () => {
    const r = await runApi(sb, "diverge.ts")
    expect(r.status).toBe("failed")
    expect(r.nodes[0].error).toBe("loss diverged at step 2")
    const rows = query<{ name: string; step: number; value: number | string }>("SELECT name, step, value FROM metrics ORDER BY rowid")
    expect(rows).toEqual([
      { name: "loss", step: 1, value: 1.5 },
      { name: "loss", step: 2, value: "NaN" },
      { name: "grad_norm", step: 2, value: "Infinity" },
      { name: "grad_min", step: 2, value: "-Infinity" },
    ])
    const store = new Store(sb.cacheDir)
    const [execution] = store.executionsOf("diverge")
    expect(store.metricsOf(execution.id).map((m) => m.value)).toEqual([1.5, Number.NaN, Infinity, -Infinity])
    store.close()
    const jsonl = readFileSync(join(r.runDir, "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l).value)
    expect(jsonl).toEqual([1.5, "NaN", "Infinity", "-Infinity"])
    const show = await cli(sb, ["show", "diverge"])
    expect(show.stdout).toMatch(/^error +loss diverged at step 2$/m)
    expect(show.stdout).toMatch(/^metric +loss = NaN \(step 2\) +\(non-finite\)$/m)
    expect(show.stdout).toMatch(/^metric +grad_norm = Infinity \(step 2\) +\(non-finite\)$/m)
  })
})

describe("killed runs", () => {
  it("show as interrupted in ls, show and status once their process is gone", async () => {
    const gate = join(sb.dir, "gate")
    const first = startCli(sb, ["run", fixture("train.ts"), "--plain"], { PIPE_TEST_GATE: gate })
    await until("train to start", () => first.output().includes("start    train"))
    first.child.kill("SIGKILL")
    await first.done
    const ls = await cli(sb, ["ls"])
    expect(ls.stdout).toMatch(/^\S+ +interrupted /m)
    const runId = ls.stdout.split(" ")[0]
    const show = await cli(sb, ["show", runId])
    expect(show.stdout).toMatch(/^run \S+ +interrupted/)
    expect(show.stdout).toMatch(/^ +interrupted .* train +interrupted: the run's process \(pid \d+\) ended without finishing it/m)
    const status = await cli(sb, ["status", fixture("train.ts")])
    expect(status.stdout).toMatch(/previous execution interrupted/)
    expect(query("SELECT status FROM runs")).toEqual([{ status: "interrupted" }])
  })

  it("a live pid that now belongs to another process (pid reuse) is told apart by its start time", () => {
    const store = new Store(sb.cacheDir)
    store.startRun("mine", "p.ts", [])
    const insert = store.db.prepare("INSERT INTO runs (id, pipeline, args, status, started_at, pid, host, pid_start) VALUES (?, 'p.ts', '[]', 'running', 0, ?, ?, ?)")
    insert.run("reused", process.pid, hostname(), "1") // our pid, but a process started at tick 1
    insert.run("dead", 2 ** 22 + 12345, hostname(), null)
    insert.run("elsewhere", 2 ** 22 + 12345, "another-host", null) // cannot be checked from here
    store.close()
    const again = new Store(sb.cacheDir)
    const status = Object.fromEntries(again.runs(10).map((r) => [r.id, r.status]))
    again.close()
    expect(status).toEqual({ mine: "running", reused: "interrupted", dead: "interrupted", elsewhere: "running" })
  })
})

describe("a damaged cache database", () => {
  const dbFiles = () => {
    for (const suffix of ["-wal", "-shm"]) rmSync(join(sb.cacheDir, `cache.sqlite${suffix}`), { force: true })
  }
  const payloads = () => readdirSync(join(sb.cacheDir, "objects")).flatMap((d) => readdirSync(join(sb.cacheDir, "objects", d)))

  it("truncated to 0 bytes: gc refuses to delete the payloads, doctor --cache restores every entry", async () => {
    await runApi(sb, fixture("chain.ts"))
    const before = payloads()
    expect(before.length).toBeGreaterThan(0)
    dbFiles()
    truncateSync(join(sb.cacheDir, "cache.sqlite"), 0)

    const gc = await cli(sb, ["gc"])
    expect(gc.code).not.toBe(0)
    expect(gc.stderr).toContain("has no cache entries and no runs")
    expect(gc.stderr).toContain("pipe doctor --cache")
    expect(gc.stderr).not.toContain("pipe --help")
    expect(payloads()).toEqual(before)

    const doctor = await cli(sb, ["doctor", "--cache"])
    expect(doctor.code).toBe(0)
    expect(doctor.stdout).toMatch(/6 cache entries; 6 restored/)
    const traced = sb.traced().length
    const again = await runApi(sb, fixture("chain.ts"))
    expect(again.counts).toMatchObject({ cached: 6, succeeded: 0 })
    expect(sb.traced()).toHaveLength(traced)
  })

  it("entries lost from a working database: gc refuses while their sidecars name them", async () => {
    await runApi(sb, fixture("chain.ts"))
    const d = new Database(join(sb.cacheDir, "cache.sqlite"))
    d.prepare("DELETE FROM cache WHERE key IN (SELECT key FROM cache LIMIT 2)").run()
    d.close()
    const store = new Store(sb.cacheDir)
    expect(() => store.gc()).toThrow(CacheError)
    expect(() => store.gc()).toThrow(/lacks 2 cache entries whose sidecars are in/)
    store.close()
    expect(doctorCache(sb.cacheDir).lines.join("\n")).toMatch(/6 cache entries; 2 restored into the database, 4 already there/)
    const after = new Store(sb.cacheDir)
    expect(after.gc().files).toBe(0)
    after.close()
  })

  it("a cache from before sidecars: doctor --cache writes them, so a later truncation can be repaired", async () => {
    await runApi(sb, fixture("chain.ts"))
    rmSync(join(sb.cacheDir, "index"), { recursive: true })
    expect(doctorCache(sb.cacheDir).lines.join("\n")).toContain("6 entries had no sidecar (published before pipe kept them): written")
    dbFiles()
    truncateSync(join(sb.cacheDir, "cache.sqlite"), 0)
    expect(doctorCache(sb.cacheDir).lines.join("\n")).toMatch(/6 cache entries; 6 restored/)
    const again = await runApi(sb, fixture("chain.ts"))
    expect(again.counts).toMatchObject({ cached: 6, succeeded: 0 })
  })

  it("garbled: every command names the file and the way out; doctor --cache moves it aside and rebuilds", async () => {
    await runApi(sb, fixture("chain.ts"))
    dbFiles()
    writeFileSync(join(sb.cacheDir, "cache.sqlite"), "this is not a database, it was overwritten by mistake\n".repeat(200))
    const ls = await cli(sb, ["ls"])
    expect(ls.code).toBe(2)
    expect(ls.stderr).toContain(`the cache database ${join(sb.cacheDir, "cache.sqlite")} is damaged (file is not a database)`)
    expect(ls.stderr).toContain("Run pipe doctor --cache")

    const doctor = await cli(sb, ["doctor", "--cache"])
    expect(doctor.code).toBe(0)
    expect(doctor.stdout).toMatch(/damaged \(file is not a database\)/)
    expect(doctor.stdout).toMatch(/moved aside to \S+cache\.sqlite\.damaged-/)
    expect(readdirSync(sb.cacheDir).some((f) => f.startsWith("cache.sqlite.damaged-"))).toBe(true)
    const again = await runApi(sb, fixture("chain.ts"))
    expect(again.counts).toMatchObject({ cached: 6, succeeded: 0 })
  })
})

describe("small items", () => {
  /** Runs chain.ts; returns the hash and path of render's (file) payload. */
  const renderPayload = async () => {
    await runWithLines("chain.ts")
    const store = new Store(sb.cacheDir)
    const hash = store.executionsOf("render")[0].output!
    store.close()
    return { hash, payload: join(sb.cacheDir, "objects", hash.slice(0, 2), hash) }
  }

  it("plain output lists cached nodes; the counter never passes the total when a corrupt payload is recomputed", async () => {
    const { payload } = await renderPayload()
    const bytes = readFileSync(payload)
    bytes[0] ^= 1 // same size: found when counted reads it, then render is recomputed
    writeFileSync(payload, bytes)
    const { result, lines } = await runWithLines("chain.ts", ["counted"])
    expect(result.status).toBe("succeeded")
    expect(lines.some((l) => / cached +render \[\d+\/6\]$/.test(l))).toBe(true)
    expect(lines.some((l) => / succeeded render /.test(l))).toBe(true)
    const counters = lines.flatMap((l) => [.../\[(\d+)\/(\d+)\]$/.exec(l) ?? []].slice(1).map(Number))
    for (let i = 0; i < counters.length; i += 2) expect(counters[i]).toBeLessThanOrEqual(counters[i + 1])
    expect(lines.at(-1)).toMatch(/\[6\/6\]$/)
  })

  it("a payload that fails its size check is recomputed with a warning naming the file and why", async () => {
    const { hash, payload } = await renderPayload()
    const size = statSync(payload).size
    truncateSync(payload, 3)
    const { result, lines } = await runWithLines("chain.ts")
    expect(result.counts).toMatchObject({ succeeded: 1, cached: 5 })
    expect(lines).toContainEqual(expect.stringContaining(`warning: render: cached result ${hash.slice(0, 12)} dropped: its payload ${payload} is 3 bytes, ${size} were published; recomputing it`))
  })

  it("a malformed sweep( in --set is reported as a malformed sweep", async () => {
    const store = new Store(sb.cacheDir)
    const error = await Effect.runPromise(Effect.flip(planFile(store, fixture("example.ts"), ["sum.scale=sweep([1, 2]"])))
    store.close()
    expect(error.message).toContain("--set sum.scale=sweep([1, 2]: expected name.param=sweep([v1, v2, ...]) with a JSON array of values")
  })

  it("gc removes work directories of interrupted nodes, not those a live run has claimed", () => {
    const store = new Store(sb.cacheDir)
    for (const key of ["a".repeat(64), "b".repeat(64)]) {
      mkdirSync(store.workDir(key), { recursive: true })
      writeFileSync(join(store.workDir(key), "checkpoint.bin"), new Uint8Array(1000))
    }
    expect(store.claim("b".repeat(64), "someone").ok).toBe(true) // claimed by this (live) process
    expect(store.gc()).toEqual({ files: 0, workDirs: 1, bytes: 1000 })
    expect(existsSync(store.workDir("a".repeat(64)))).toBe(false)
    expect(existsSync(store.workDir("b".repeat(64)))).toBe(true)
    store.close()
  })

  it("gc keeps what Slurm jobs left without a coordinator need: a running job's work dir, a finished job's unrecorded result", async () => {
    // a coordinator killed outright leaves job.json + submitted.json and the job computing in work/<key>;
    // a job that finished after it published its payload and wrote result.json, which no run has recorded yet
    await runApi(sb, fixture("chain.ts")) // a cache in use: gc refuses to empty one that looks truncated
    const store = new Store(sb.cacheDir)
    const running = "c".repeat(64)
    const finished = "d".repeat(64)
    for (const key of [running, finished]) {
      mkdirSync(store.workDir(key), { recursive: true })
      writeFileSync(join(store.workDir(key), "checkpoint.bin"), new Uint8Array(1000))
      mkdirSync(join(sb.cacheDir, "slurm", key), { recursive: true })
      writeFileSync(join(sb.cacheDir, "slurm", key, "submitted.json"), JSON.stringify({ job: key === running ? "41" : "42" }))
    }
    const result = store.putBytes(new TextEncoder().encode("the finished job's output"))
    const stray = store.putBytes(new TextEncoder().encode("a payload nothing names"))
    const old = new Date(Date.now() - 3_600_000) // past gc's grace for payloads being committed
    for (const { hash } of [result, stray]) utimesSync(store.objectPath(hash), old, old)
    const entry = { key: finished, hash: result.hash, kind: "bytes", type: "Total", size: result.size, json: null }
    writeFileSync(join(sb.cacheDir, "slurm", finished, "result.json"), JSON.stringify({ type: "done", entry, metrics: [] }))
    store.close()
    // no controller to ask (the real-cluster case is in tests/slurm): squeue fails as it does when
    // slurmctld is down, so the job may still be running
    const bin = join(sb.dir, "bin")
    mkdirSync(bin)
    writeFileSync(join(bin, "squeue"), "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n", { mode: 0o755 })
    const gc = await cli(sb, ["gc"], { PATH: `${bin}:${process.env.PATH}` })
    expect(gc.code, gc.stderr).toBe(0)
    expect(gc.stdout).toContain("removed 1 unreferenced payload files and 1 work directories of interrupted nodes")
    expect(gc.stdout).toMatch(/kept the work directories of 1 submitted Slurm jobs whose state squeue cannot give \(squeue: slurm_load_jobs error: Unable to contact slurm controller \(connect failure\)\)$/m)
    expect(gc.stdout).toContain("kept the results of 1 finished Slurm jobs that no run has recorded yet")
    expect(existsSync(join(sb.cacheDir, "work", running, "checkpoint.bin"))).toBe(true)
    expect(existsSync(join(sb.cacheDir, "work", finished))).toBe(false)
    const after = new Store(sb.cacheDir)
    expect(existsSync(after.objectPath(result.hash))).toBe(true)
    expect(existsSync(after.objectPath(stray.hash))).toBe(false)
    after.close()
  })

  it("gc refuses, deleting nothing, when a Slurm job's result.json cannot be read, and names the file", async () => {
    await runApi(sb, fixture("chain.ts"))
    const dir = join(sb.cacheDir, "slurm", "e".repeat(64))
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, "result.json"), '{"type":"done","entry":{"ha') // torn: written by hand, or the disk filled
    const store = new Store(sb.cacheDir)
    const stray = store.putBytes(new TextEncoder().encode("a payload nothing names"))
    utimesSync(store.objectPath(stray.hash), new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000))
    store.close()
    const gc = await cli(sb, ["gc"])
    expect(gc.code).not.toBe(0)
    expect(gc.stderr).toContain(`${join(dir, "result.json")} cannot be read (`)
    expect(gc.stderr).toContain(`gc deletes nothing until it can, or until ${dir} is removed`)
    expect(existsSync(join(sb.cacheDir, "objects", stray.hash.slice(0, 2), stray.hash))).toBe(true)
  })

  it("a cache this user cannot write: ls, show and status work, run names the path", async (ctx) => {
    try {
      execFileSync("runuser", ["-u", "nobody", "--", "true"], { stdio: "pipe" })
    } catch {
      return ctx.skip("needs root, runuser and a user nobody, to run pipe as a user who cannot write the cache")
    }
    await runApi(sb, fixture("chain.ts"))
    const d = new Database(join(sb.cacheDir, "cache.sqlite"))
    d.prepare("INSERT INTO runs (id, pipeline, args, status, started_at, pid, host) VALUES ('killed', 'p.ts', '[]', 'running', 0, ?, ?)").run(2 ** 22 + 12345, hostname())
    d.close()
    chmodSync(sb.dir, 0o755)
    const asNobody = (args: ReadonlyArray<string>) => {
      try {
        return { code: 0, out: execFileSync("runuser", ["-u", "nobody", "--", process.execPath, "--import", "tsx", resolve("src/cli/main.ts"), ...args], { env: { ...sb.env, HOME: "/tmp" }, stdio: "pipe", encoding: "utf8" }) }
      } catch (e) {
        const x = e as { status: number; stdout: string; stderr: string }
        return { code: x.status, out: x.stdout + x.stderr }
      }
    }
    const ls = asNobody(["ls"])
    expect(ls.out).toMatch(/succeeded/)
    expect(ls.out).toMatch(/^killed +interrupted /m) // as seen from a snapshot: the cache is not written
    expect(ls.code).toBe(0)
    const show = asNobody(["show", "sum"])
    expect(show.out).toMatch(/metric +total = 55/)
    const status = asNobody(["status", fixture("chain.ts")])
    expect(status.out).toMatch(/^6 nodes: 6 cached, 0 to run/m)
    const run = asNobody(["run", fixture("chain.ts"), "--plain"])
    expect(run.code).not.toBe(0)
    expect(run.out).toContain(join(sb.cacheDir, "cache.sqlite"))
    expect(run.out).toContain("not writable by this user")
    expect(query("SELECT id FROM runs WHERE status = 'running'")).toEqual([{ id: "killed" }]) // nothing was written
  })
})

describe("a full disk", () => {
  it("under the cache: the node fails naming the path, the run is recorded as ended, the CLI exits 1 cleanly", (ctx) =>
    onFullTmpfs(ctx, sb.cacheDir, "3m", async (r, runDir) => {
      expect(r.stdout).toMatch(/failed +fill .*(no space left on device|database or disk is full)/)
      expect(r.stdout).toMatch(new RegExp(`failed +fill .*${sb.cacheDir}/(tmp/|objects/|index/|cache\\.sqlite)`))
      expect(r.stdout).toContain("(the disk is full: free some space and run again; cached results are kept)")
      expect(readdirSync(join(sb.cacheDir, "tmp"))).toEqual([]) // a failed payload write leaves nothing behind
      if (existsSync(join(runDir, "summary.json"))) expect(JSON.parse(readFileSync(join(runDir, "summary.json"), "utf8")).status).toBe("failed")
      const ls = await cli(sb, ["ls"])
      expect(ls.stdout).toMatch(/ (failed|interrupted) /)
      const again = await cli(sb, ["run", fixture("disk-full.ts"), "--plain"])
      expect(again.code).toBe(0)
    }))

  it("under runs/: the healthy node is cached, missing records are reported once each, summary.json is never half written", (ctx) =>
    onFullTmpfs(ctx, sb.runsDir, "1m", async (r, runDir) => {
      expect(r.stdout).toMatch(/succeeded fill /)
      expect(r.stdout).toMatch(/succeeded lines /)
      // Once per file, each naming it: the log, and metrics.jsonl (first written after the disk filled).
      const warnings = r.stdout.split("\n").filter((l) => l.includes("warning: fill: appending to"))
      expect(warnings).toHaveLength(2)
      expect(warnings[0]).toMatch(/appending to \S+\/logs\/fill\.\w+\.log failed: ENOSPC: no space left on device.*; going on without the rest of its log$/)
      expect(warnings[1]).toMatch(/appending to \S+\/metrics\.jsonl failed: ENOSPC: .*; going on without metrics\.jsonl \(the metrics are still in the cache database\)$/)
      expect(r.stdout).toContain(`error: writing ${join(runDir, "summary.json")} failed: ENOSPC`)
      expect(existsSync(join(runDir, "summary.json"))).toBe(false)
      expect(readdirSync(runDir).filter((f) => f.endsWith(".tmp"))).toEqual([])
      expect(query<{ status: string }>("SELECT status FROM runs")).toEqual([{ status: "failed" }])
      const again = await cli(sb, ["run", fixture("disk-full.ts"), "--plain"])
      expect(again.code).toBe(0)
      expect(again.stdout).toMatch(/0 ran, 2 cached/)
    }))
})
