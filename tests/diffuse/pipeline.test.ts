// pipelines/diffuse.ts end to end at reduced size on the shipped tiny model (one training prompt,
// two held-out prompts, a few passes, 40 samples per prompt): every node succeeds, the run folder
// gets the report, one histogram per prompt and the adapter; a second run is fully cached; a run
// killed with SIGKILL during training resumes diffuse-train from its checkpoint.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { runPipeline, silentReporter, Store } from "../../src/engine/index.ts"
import { readAdapter } from "../../src/models/peft.ts"
import type { DiffuseReport } from "../../stages/diffuse/report.ts"
import { sandbox, startCli, until } from "../engine/helpers.ts"
import { checkpointStepIn } from "../stage-harness.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const pipelineFile = path.join(repo, "pipelines/diffuse.ts")
const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

// reduced sets: uniform 1–10 to train on; held out its rewording and 1–5
const trainDir = path.join(sb.dir, "train")
const testDir = path.join(sb.dir, "test")
fs.mkdirSync(trainDir)
fs.mkdirSync(testDir)
fs.copyFileSync(path.join(repo, "datasets/diffuse/train/numbers-1-10.json"), path.join(trainDir, "numbers-1-10.json"))
for (const f of ["numbers-1-10-reworded.json", "numbers-1-5.json"]) fs.copyFileSync(path.join(repo, "datasets/diffuse/test", f), path.join(testDir, f))

const small = [
  `train_prompts.path=${trainDir}`,
  `test_prompts.path=${testDir}`,
  "diffuse-train.passes=12",
  ...["sample_untuned_train", "sample_tuned_train", "sample_untuned_test", "sample_tuned_test"].flatMap((n) => [`${n}.n=40`, `${n}.batchSize=40`]),
]

const run = async (overrides: ReadonlyArray<string>) => {
  const store = new Store(sb.cacheDir)
  try {
    return await Effect.runPromise(runPipeline({ store, pipelineFile, overrides, rerun: [], runsDir: sb.runsDir, reporter: silentReporter }))
  } finally {
    store.close()
  }
}

describe("pipelines/diffuse.ts at reduced size", () => {
  it("trains, samples and reports; a second run is fully cached", async () => {
    const first = await run(small)
    expect(first.nodes.filter((n) => n.status !== "succeeded")).toEqual([])
    const report = JSON.parse(fs.readFileSync(path.join(first.runDir, "report.json"), "utf8")) as DiffuseReport
    // the loss falls from the untuned model's towards ln 10 (12 passes: not all the way)
    const losses = report.training.passLosses
    expect(report.training.optimalLoss).toBeCloseTo(Math.log(10), 12)
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] / 2)
    expect(losses[losses.length - 1]).toBeGreaterThan(Math.log(10) - 1e-4)
    const [train, heldout] = report.sets
    expect(heldout.prompts.map((p) => p.id)).toEqual(["numbers-1-10-reworded", "numbers-1-5"])
    const tuned = train.prompts[0].variants.find((v) => v.label === "tuned")!
    const untuned = train.prompts[0].variants.find((v) => v.label === "untuned")!
    expect(tuned.n).toBe(40)
    // the untuned tiny model answers with arithmetic sentences, never a bare number; tuned, mostly numbers
    expect(untuned.validShare).toBeLessThan(0.1)
    expect(tuned.validShare).toBeGreaterThan(0.5)
    expect(tuned.entropy).toBeGreaterThan(untuned.entropy)
    const md = fs.readFileSync(path.join(first.runDir, "report.md"), "utf8")
    expect(md).toContain("| numbers-1-10 | tuned |")
    expect(md).toContain("optimal Σ H(p*) = 2.3026")
    const svgs = fs.readdirSync(path.join(first.runDir, "histograms")).sort()
    expect(svgs).toEqual(["held-out-numbers-1-10-reworded.svg", "held-out-numbers-1-5.svg", "train-numbers-1-10.svg"])
    const svg = fs.readFileSync(path.join(first.runDir, "histograms", svgs[2]), "utf8")
    expect(svg.startsWith("<svg")).toBe(true)
    expect(svg).toContain("train: numbers-1-10")
    const adapter = Effect.runSync(readAdapter(path.join(first.runDir, "adapter")))
    expect(adapter.config).toMatchObject({ r: 4, loraAlpha: 8 })

    const second = await run(small)
    expect(second.counts).toMatchObject({ succeeded: 0, cached: first.nodes.length })
  }, 600_000)

  it("resumes diffuse-train from its checkpoint after the run is killed", async () => {
    // a new key (more passes), checkpoints every 3 steps, so the kill lands between checkpoints
    const longer = [...small, "diffuse-train.passes=40", "diffuse-train.checkpointEvery=3"]
    const killed = startCli(sb, ["run", pipelineFile, "--plain", ...longer.flatMap((o) => ["--set", o])])
    await until("a diffuse-train checkpoint after some steps", () => checkpointStepIn(sb.cacheDir) > 0, 300_000)
    killed.child.kill("SIGKILL")
    expect((await killed.done).signal).toBe("SIGKILL")

    const resumed = await run(longer)
    expect(resumed.status).toBe("succeeded")
    const logs = path.join(resumed.runDir, "logs")
    const log = fs.readFileSync(path.join(logs, fs.readdirSync(logs).find((f) => f.startsWith("diffuse-train."))!), "utf8")
    expect(log).toMatch(/resumed from .*checkpoint\.safetensors at step [1-9]\d* of 40/)
  }, 900_000)
})
