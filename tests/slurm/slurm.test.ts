// `pipe run --executor slurm` against a real single-machine Slurm cluster (scripts/slurm-up.sh brings
// it up, or finds it up; these tests fail, never skip, when it cannot start): the same results and
// cache keys as the local executors, a job cancelled mid-training resubmitted and resumed from its
// checkpoint, a job requeued by Slurm waited for, a killed coordinator's job kept by gc and adopted
// by the next run (or its result, when it finished meanwhile), a failing or crashing job failing its
// node with its log's tail, Ctrl-C cancelling the jobs.
import { execFileSync } from "node:child_process"
import { existsSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs"
import { join, resolve } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { NodeOutcome } from "../../src/engine/scheduler.ts"
import { smallBlue } from "../baking/blue-run.ts"
import { cli, fixture, sandbox, startCli, until, type Sandbox } from "../engine/helpers.ts"

const repo = resolve(import.meta.dirname, "../..")
const state = process.env.PIPE_SLURM_STATE ?? `/tmp/pipe-slurm-${process.getuid!()}`
// Set before the sandboxes copy the environment: every `pipe` and every Slurm command finds the cluster.
process.env.SLURM_CONF = join(state, "slurm.conf")

let startedHere = false
beforeAll(() => {
  const out = execFileSync(join(repo, "scripts/slurm-up.sh"), { encoding: "utf8", env: { ...process.env, PIPE_SLURM_STATE: state } })
  startedHere = !out.includes("already up")
  // Idempotent: a second call finds the cluster up and leaves it alone.
  expect(execFileSync(join(repo, "scripts/slurm-up.sh"), { encoding: "utf8", env: { ...process.env, PIPE_SLURM_STATE: state } })).toContain("already up")
}, 300_000)
afterAll(() => {
  if (startedHere) execFileSync(join(repo, "scripts/slurm-down.sh"), { env: { ...process.env, PIPE_SLURM_STATE: state } })
})

const sandboxes: Array<Sandbox> = []
const box = () => {
  const sb = sandbox()
  sandboxes.push(sb)
  return sb
}
afterAll(() => {
  for (const sb of sandboxes) rmSync(sb.dir, { recursive: true, force: true })
})

const summaryOf = (sb: Sandbox, stdout: string) => {
  const runDir = /^records: (.+)$/m.exec(stdout)?.[1]
  if (runDir === undefined) throw new Error(`no run folder in:\n${stdout}`)
  return JSON.parse(readFileSync(join(runDir, "summary.json"), "utf8")) as { runId: string; status: string; nodes: ReadonlyArray<NodeOutcome> }
}

/** Each node's status, cache key and output hash, by name. */
const outcomes = (nodes: ReadonlyArray<NodeOutcome>) => Object.fromEntries(nodes.map((n) => [n.name, { status: n.status, key: n.key, output: n.output }]))

const squeueState = (job: string) => execFileSync("squeue", ["-h", "-t", "all", "-o", "%T", "-j", job], { encoding: "utf8" }).trim()

/** The Slurm job running a node: its job directory in the cache is named by the node's key. */
const submittedJob = (sb: Sandbox): { key: string; job: string } | undefined => {
  const root = join(sb.cacheDir, "slurm")
  if (!existsSync(root)) return undefined
  for (const key of readdirSync(root)) {
    const f = join(root, key, "submitted.json")
    if (existsSync(f)) return { key, job: (JSON.parse(readFileSync(f, "utf8")) as { job: string }).job }
  }
  return undefined
}

/** The train fixture's checkpointed step (it waits at $PIPE_TEST_GATE after step 10 of 20). */
const checkpointStep = (sb: Sandbox, key: string): number => {
  const f = join(sb.cacheDir, "work", key, "checkpoint.json")
  return existsSync(f) ? (JSON.parse(readFileSync(f, "utf8")) as { step: number }).step : -1
}

/** `pipe run` of the train fixture on Slurm; its stage waits after step 10 until `gate` exists. */
const startTraining = (sb: Sandbox) => startCli(sb, ["run", fixture("train.ts"), "--plain", "--executor", "slurm"], { PIPE_TEST_GATE: join(sb.dir, "gate") })

/** A fresh sandbox and a run of the train fixture whose job has checkpointed step 10 and waits at the gate. */
const trainingAtGate = async () => {
  const sb = box()
  const run = startTraining(sb)
  await until("the train job to reach its gate", () => {
    const s = submittedJob(sb)
    return s !== undefined && checkpointStep(sb, s.key) === 10
  }, 180_000)
  return { sb, run, openGate: () => writeFileSync(join(sb.dir, "gate"), ""), ...submittedJob(sb)! }
}

describe("pipe run --executor slurm", () => {
  it("runs the example pipeline as jobs (arrays for sweep instances) with the same results and keys as locally", async () => {
    const local = box()
    const onSlurm = box()
    const a = await cli(local, ["run", fixture("example.ts"), "--plain"])
    const b = await cli(onSlurm, ["run", fixture("example.ts"), "--plain", "--executor", "slurm", "--slurm-all"])
    expect(b.code, b.stdout + b.stderr).toBe(0)
    const sa = summaryOf(local, a.stdout)
    const sbSummary = summaryOf(onSlurm, b.stdout)
    expect(Object.values(outcomes(sbSummary.nodes)).every((o) => o.status === "succeeded")).toBe(true)
    expect(outcomes(sbSummary.nodes)).toEqual(outcomes(sa.nodes))
    expect(b.stdout).toMatch(/start +sum\[generate\.start=1,scale=1\] \(slurm job, cpu\)/)
    // every node ran as a job; the sweep's instances dispatched together went as one job array
    const show = await cli(onSlurm, ["show", sbSummary.runId])
    const jobs = [...show.stdout.matchAll(/\[slurm job (\d+(?:_\d+)?)\]/g)].map((m) => m[1])
    expect(jobs).toHaveLength(12)
    expect(jobs.some((j) => j.includes("_"))).toBe(true)
    // the jobs' directories are gone once recorded; a second run is all cached and submits nothing
    expect(readdirSync(join(onSlurm.cacheDir, "slurm")).filter((d) => d !== "arrays")).toEqual([])
    const again = await cli(onSlurm, ["run", fixture("example.ts"), "--plain", "--executor", "slurm", "--slurm-all"])
    expect(again.stdout).toMatch(/12 nodes: 0 ran, 12 cached/)
  })

  it("runs pipelines/blue.ts at reduced size with the same results and keys as locally", async () => {
    const overrides = smallBlue(resolve(repo, "models/tiny-chat")).flatMap((o) => ["--set", o])
    const file = resolve(repo, "pipelines/blue.ts")
    const local = box()
    const onSlurm = box()
    const a = await cli(local, ["run", file, "--plain", ...overrides])
    expect(a.code, a.stdout + a.stderr).toBe(0)
    const b = await cli(onSlurm, ["run", file, "--plain", "--executor", "slurm", "--slurm-no-gpus", ...overrides])
    expect(b.code, b.stdout + b.stderr).toBe(0)
    expect(outcomes(summaryOf(onSlurm, b.stdout).nodes)).toEqual(outcomes(summaryOf(local, a.stdout).nodes))
    expect(b.stdout).toMatch(/start +lora-train\S* \(slurm job, cpu\)/)
  }, 900_000)

  /** Interrupts the gated training's job, lets it resume, checks it resumed from step 10; returns the node's log. */
  const interruptAndResume = async (interrupt: (job: string) => void) => {
    const { sb, run, openGate, job } = await trainingAtGate()
    interrupt(job)
    // A requeued job waits out its credential lifetime first (cred_expire, 30 s in slurm-up.sh's cluster).
    await until("the job to resume", () => sb.traced().includes("train start step=10"), 240_000)
    openGate()
    const done = await run.done
    expect(done.code, done.stdout + done.stderr).toBe(0)
    expect(sb.traced().filter((l) => l.startsWith("train start"))).toEqual(["train start step=0", "train start step=10"])
    return { sb, done, job, log: (await cli(sb, ["logs", "train"])).stdout }
  }

  it("resubmits a job cancelled mid-training, which resumes from its checkpoint", async () => {
    const { sb, done, job, log } = await interruptAndResume((job) => execFileSync("scancel", [job]))
    expect(log).toContain(`Slurm job ${job} ended CANCELLED without publishing a result; resubmitting (retry 1 of 2)`)
    // the resumed training gives what an uninterrupted local run gives
    const local = box()
    const plain = await cli(local, ["run", fixture("train.ts"), "--plain"])
    expect(outcomes(summaryOf(sb, done.stdout).nodes)).toEqual(outcomes(summaryOf(local, plain.stdout).nodes))
  }, 600_000)

  it("waits for a job Slurm requeues itself, which resumes from its checkpoint", async () => {
    const { job, log } = await interruptAndResume((job) => execFileSync("scontrol", ["requeue", job]))
    // the same job ran again: nothing was resubmitted
    expect(log).not.toContain("resubmitting")
    expect(log).toContain(`--- Slurm job ${job}:`)
  }, 600_000)

  it("a coordinator killed outright leaves its job running; the next run adopts it instead of submitting it again", async () => {
    const { sb, run: first, openGate, job, key } = await trainingAtGate()
    // the job's progress reaches the coordinator's display (the stage waits at step 10 of 20)
    await until("the job's progress to be shown", () => first.output().includes("progress train 10/20 steps"), 30_000)
    first.child.kill("SIGKILL")
    await first.done
    expect(squeueState(job)).toBe("RUNNING")
    // gc between the runs leaves the running job's work dir (its checkpoint) alone
    const gc = await cli(sb, ["gc"])
    expect(gc.stdout).toContain("kept the work directories of 1 Slurm jobs still running")
    expect(checkpointStep(sb, key)).toBe(10)
    const second = startTraining(sb)
    await until("the second run to start train", () => second.output().includes("start    train"), 120_000)
    // pipe status names the job computing the node
    await until("the adoption to be recorded", () => {
      const runs = readdirSync(sb.runsDir).map((r) => join(sb.runsDir, r, "logs"))
      return runs.some((d) => existsSync(d) && readdirSync(d).some((f) => f.startsWith("train") && readFileSync(join(d, f), "utf8").includes(`adopting Slurm job ${job} (RUNNING)`)))
    })
    const status = await cli(sb, ["status", fixture("train.ts")])
    expect(status.stdout).toMatch(new RegExp(`train +running as slurm job ${job} RUNNING`))
    openGate()
    const done = await second.done
    expect(done.code, done.stdout + done.stderr).toBe(0)
    expect(sb.traced().filter((l) => l.startsWith("train start"))).toEqual(["train start step=0"])
    expect(squeueState(job)).toBe("COMPLETED")
  }, 600_000)

  it("a job that finishes after its coordinator was killed: gc keeps its result, the next run records it without running it again", async () => {
    const { sb, run: first, openGate, key } = await trainingAtGate()
    first.child.kill("SIGKILL")
    await first.done
    openGate()
    await until("the orphaned job to write its result", () => existsSync(join(sb.cacheDir, "slurm", key, "result.json")), 120_000)
    // its payload is in objects/ but in no cache entry: gc must not take it (its grace for fresh payloads passed)
    const { entry } = JSON.parse(readFileSync(join(sb.cacheDir, "slurm", key, "result.json"), "utf8")) as { entry: { hash: string } }
    const payload = join(sb.cacheDir, "objects", entry.hash.slice(0, 2), entry.hash)
    expect(existsSync(payload)).toBe(true)
    utimesSync(payload, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000))
    const gc = await cli(sb, ["gc"])
    expect(gc.stdout).toContain("kept the results of 1 finished Slurm jobs that no run has recorded yet")
    expect(existsSync(payload)).toBe(true)
    const second = await cli(sb, ["run", fixture("train.ts"), "--plain", "--executor", "slurm"])
    expect(second.code, second.stdout + second.stderr).toBe(0)
    expect(sb.traced().filter((l) => l.startsWith("train start"))).toEqual(["train start step=0"])
  }, 600_000)

  it("fails a node whose stage fails, or whose job crashes on every try, with the tail of the job's log", async () => {
    const sb = box()
    const failing = await cli(sb, ["run", fixture("failing.ts"), "--plain", "--executor", "slurm", "--slurm-all"])
    expect(failing.code).toBe(1)
    const bad = summaryOf(sb, failing.stdout).nodes.find((n) => n.name.includes("title=bad"))!
    expect(bad.status).toBe("failed")
    expect(bad.error).toMatch(/^render bad: asked to fail\n--- last lines of Slurm job \d+(_\d+)?'s log ---\n/)
    expect(bad.error).toMatch(/start render\[.*title=bad.*\] key=/)
    expect(summaryOf(sb, failing.stdout).nodes.find((n) => n.name.includes("title=good"))!.status).toBe("succeeded")

    const crashing = await cli(sb, ["run", fixture("crashing.ts"), "--plain", "--executor", "slurm", "--slurm-retries", "1"])
    expect(crashing.code).toBe(1)
    const crash = summaryOf(sb, crashing.stdout).nodes.find((n) => n.name.startsWith("crash"))!
    expect(crash.error).toMatch(/^Slurm job \d+ ended (FAILED|CANCELLED) without publishing a result \(after 1 retries\)\n--- last lines of its log ---\n/)
    expect(crash.error).toContain("start crash")
    expect(sb.traced().filter((l) => l === "crash")).toHaveLength(2)
  }, 600_000)

  it("Ctrl-C cancels the run's jobs and records them as interrupted", async () => {
    const { sb, run, job } = await trainingAtGate()
    run.child.kill("SIGINT")
    const done = await run.done
    expect(done.code).toBe(130)
    await until("the job to be cancelled", () => squeueState(job) === "CANCELLED", 60_000)
    const show = await cli(sb, ["show", summaryOf(sb, done.stdout).runId])
    expect(show.stdout).toMatch(new RegExp(`interrupted .* train +\\[slurm job ${job}\\] +interrupted`))
  }, 600_000)
})
