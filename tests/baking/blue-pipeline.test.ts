// pipelines/blue.ts end to end at reduced size on the shipped tiny model: the baked model (no
// system prompt) moves to the prompted one (KL down, behaviour up); a second run is fully cached;
// recomputing sampling, training and an evaluation leaves what is below them cached;
// changing the LoRA rank reruns training and what follows it only; a `pipe run` killed with
// SIGKILL during training resumes from lora-train's checkpoint on the next run.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { exportNode } from "../../src/cli/export.ts"
import { Store } from "../../src/engine/index.ts"
import { readAdapter } from "../../src/models/peft.ts"
import type { BakeComparison } from "../../stages/baking/artifacts.ts"
import { cli, sandbox, startCli, until } from "../engine/helpers.ts"
import { checkpointStepIn } from "../stage-harness.ts"
import { bluePipelineFile as pipelineFile, runBlue } from "./blue-run.ts"

const tinyChat = path.resolve(import.meta.dirname, "../../models/tiny-chat")


const fast = [
  "train_questions.n=40",
  "validation_questions.n=10",
  "heldout_questions.n=16",
  "sample_train.n=2",
  "lora-train.epochs=2",
  "lora-train.batchSize=8",
]

const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

const run = (overrides: ReadonlyArray<string>, rerun: ReadonlyArray<string> = []) => runBlue(sb, overrides, rerun)
const ran = (s: Awaited<ReturnType<typeof run>>) => s.nodes.filter((n) => n.status === "succeeded").map((n) => n.name).sort()

describe("pipelines/blue.ts at reduced size", () => {
  it("bakes the prompt in, then reruns nothing, then only training and downstream for a new rank", async () => {
    const first = await run(fast)
    expect(first.nodes.filter((n) => n.status !== "succeeded")).toEqual([])
    const comparison = JSON.parse(fs.readFileSync(path.join(first.runDir, "compare.json"), "utf8")) as BakeComparison
    const rate = (v: string) => comparison.rows.find((r) => r.variant === v)!.behaviour.rate
    // 80 trajectories, 20 steps: the full-size defaults reach ~16x and a gap of a few points
    expect(comparison.klReduction).toBeGreaterThan(3)
    expect(rate("prompted")).toBeGreaterThan(0.9)
    expect(rate("base")).toBeLessThan(0.1)
    expect(rate("baked")).toBeGreaterThan(rate("base") + 0.5)
    expect(fs.readFileSync(path.join(first.runDir, "compare.md"), "utf8")).toContain("| baked |")
    // the trained adapter as a PEFT directory in the run folder, naming the model it was trained on
    const published = Effect.runSync(readAdapter(path.join(first.runDir, "adapter")))
    expect(published.config).toMatchObject({ r: 8, loraAlpha: 16, baseModelNameOrPath: tinyChat })
    expect([...published.modules.keys()]).toContain("model.layers.0.self_attn.q_proj")
    // and anywhere with pipe export, byte for byte the same files
    const exported = path.join(sb.dir, "exported-adapter")
    const exportRun = await cli(sb, ["export", "lora-train", exported])
    expect(exportRun.stderr).toBe("")
    expect(exportRun.stdout).toContain(`base_model_name_or_path: ${tinyChat}`)
    for (const f of ["adapter_config.json", "adapter_model.safetensors"])
      expect(Buffer.compare(fs.readFileSync(path.join(exported, f)), fs.readFileSync(path.join(first.runDir, "adapter", f)))).toBe(0)
    const exportError = (node: string) => {
      const store = new Store(sb.cacheDir)
      try {
        return Effect.runSync(Effect.flip(exportNode(store, sb.runsDir, node, exported))).message
      } finally {
        store.close()
      }
    }
    expect(exportError("compare")).toBe("compare: its output is a json artifact (BakeComparison), not an adapter (pipe export writes the adapters of training nodes)")
    expect(exportError("teacher-logits")).toMatch(/^teacher-logits: .*__metadata__\.adapter_config: missing: not a LoRA adapter \(pipe export writes the adapters of training nodes\)$/)
    expect(exportError("nope")).toContain('no finished execution of a node named "nope"')

    const second = await run(fast)
    expect(second.counts).toMatchObject({ succeeded: 0, cached: first.nodes.length })

    // early cutoff: recomputed model stages give byte-identical outputs (no timings inside them),
    // so nothing below them runs again
    const recomputed = await run(fast, ["sample_train", "sample_validation", "lora-train", "evaluate_base"])
    expect(ran(recomputed)).toEqual(["evaluate_base", "lora-train", "sample_train", "sample_validation"])

    const third = await run([...fast, "lora-train.rank=4"])
    expect(ran(third)).toEqual(["bake-plots", "compare", "evaluate_baked", "lora-train"])
  }, 480_000)

  it("resumes lora-train from its checkpoint after the run is killed", async () => {
    // a longer training (rank 2 is a new key), so the kill lands between checkpoints
    const args = ["run", pipelineFile, "--plain", ...[...fast, "lora-train.rank=2", "lora-train.epochs=30", "lora-train.checkpointEvery=5"].flatMap((o) => ["--set", o])]
    const killed = startCli(sb, args)
    await until("a lora-train checkpoint after some steps", () => checkpointStepIn(sb.cacheDir) > 0, 120_000)
    killed.child.kill("SIGKILL")
    expect((await killed.done).signal).toBe("SIGKILL")

    const resumed = await run([...fast, "lora-train.rank=2", "lora-train.epochs=30", "lora-train.checkpointEvery=5"])
    expect(resumed.status).toBe("succeeded")
    expect(ran(resumed)).toEqual(["bake-plots", "compare", "evaluate_baked", "lora-train"])
    const logs = path.join(resumed.runDir, "logs")
    const log = fs.readFileSync(path.join(logs, fs.readdirSync(logs).find((f) => f.startsWith("lora-train."))!), "utf8")
    expect(log).toMatch(/resumed from .*checkpoint\.safetensors at step [1-9]\d* of 300/)
  }, 240_000)
})
