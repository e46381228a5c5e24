// pipelines/bake-sweep.ts on a reduced sweep (two prompts x two ranks, small sizes): it ends in one
// table, a row per point with its coordinates, and each row holds the numbers of that point's own
// comparison (read back from the cache independently of the table).
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { runPipeline, silentReporter, Store } from "../../src/engine/index.ts"
import type { BakeComparison } from "../../stages/baking/artifacts.ts"
import { tableCommand } from "../../src/cli/table.ts"
import { sandbox } from "../engine/helpers.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const pipelineFile = path.join(repo, "pipelines/bake-sweep.ts")

const reduced = [
  "train_questions.n=24",
  "validation_questions.n=8",
  "heldout_questions.n=8",
  "sample_train.n=2",
  "lora-train.epochs=1",
  "lora-train.batchSize=8",
  "lora-train.lr=0.01",
  "lora-train.rank=sweep([2, 4])",
]

const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

describe("pipelines/bake-sweep.ts on a reduced sweep", () => {
  it("ends in one table over its points, each row from that point's comparison", async () => {
    const store = new Store(sb.cacheDir)
    try {
      const s = await Effect.runPromise(runPipeline({ store, pipelineFile, overrides: reduced, runsDir: sb.runsDir, reporter: silentReporter }))
      expect(s.nodes.filter((n) => n.status !== "succeeded")).toEqual([])
      // one table for the sweep, and each of the 4 points' adapters as a PEFT directory
      const four = (file: string) => [file, file, file, file]
      expect(s.published.filter((f) => "path" in f).map((f) => f.file).sort()).toEqual([...four("adapter"), ...four("behaviour.svg"), ...four("kl-per-epoch.svg"), "sweep.csv", "sweep.json", "sweep.md"])
      // each point's plots, named by its coordinates
      const plots = s.published.flatMap((f) => ("path" in f && f.file.endsWith(".svg") ? [f.path] : []))
      for (const p of plots) expect(fs.readFileSync(p, "utf8").startsWith("<svg")).toBe(true)
      expect(new Set(plots.map((p) => path.basename(p))).size).toBe(8)
      const adapters = s.published.filter((f) => "path" in f && f.file === "adapter").map((f) => ("path" in f ? f.path : ""))
      for (const dir of adapters) expect(fs.readdirSync(dir).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors"])
      expect(s.published.find((f) => f.file === "sweep.md")).toMatchObject({ print: true })

      const table = JSON.parse(fs.readFileSync(path.join(s.runDir, "sweep.json"), "utf8")) as { columns: ReadonlyArray<{ name: string }>; rows: ReadonlyArray<Record<string, unknown>> }
      // lr is set, not swept: it is no coordinate
      expect(table.columns.map((c) => c.name)).toEqual(["rank", "systemPrompt", "KL(prompted ‖ baked)", "KL reduction", "behaviour rate", "accuracy"])
      expect(table.rows.map((r) => [r.rank, r.systemPrompt])).toEqual([
        [2, "Always mention the colour blue in your answers."],
        [2, "Answer in all capital letters."],
        [4, "Always mention the colour blue in your answers."],
        [4, "Answer in all capital letters."],
      ])
      const compares = s.nodes.filter((n) => n.name.startsWith("compare["))
      expect(compares).toHaveLength(4)
      for (const c of compares) {
        const value = JSON.parse(store.readJson(c.output!)) as BakeComparison
        const baked = value.rows.find((r) => r.variant === "baked")!
        const row = table.rows.find((r) => r.systemPrompt === value.systemPrompt && c.name.endsWith(`lora-train.rank=${r.rank}]`))!
        expect(row).toEqual({
          rank: row.rank,
          systemPrompt: value.systemPrompt,
          "KL(prompted ‖ baked)": baked.kl,
          "KL reduction": value.klReduction,
          "behaviour rate": baked.behaviour.rate,
          accuracy: baked.accuracy.rate,
        })
      }
      const md = fs.readFileSync(path.join(s.runDir, "sweep.md"), "utf8")
      expect(md.split("\n").filter((l) => /^\| [24] \| /.test(l))).toHaveLength(4)
      expect(md).toMatch(/\| 4 \| Answer in all capital letters\. \| \d\.\d{4} \| \d+\.\d \| \d+\.\d% \| \d+\.\d% \|/)

      // pipe table <run> prints the same table from the records; <run> compare every point's numbers
      let printed = ""
      const pipeTable = (positional: ReadonlyArray<string>, options: Record<string, ReadonlyArray<string>>) =>
        tableCommand({ positional, options: new Map(Object.entries(options)) }, store, sb.runsDir, (t) => (printed += t))
      await pipeTable([s.runId], {})
      expect(printed).toBe(md)
      printed = ""
      await pipeTable([s.runId, "compare"], { "--columns": ["rank,systemPrompt,klReduction"], "--sort": ["-klReduction"], "--format": ["json"] })
      const byReduction = JSON.parse(printed) as { rows: ReadonlyArray<{ klReduction: number }> }
      expect(byReduction.rows.map((r) => r.klReduction)).toEqual(table.rows.map((r) => r["KL reduction"] as number).sort((a, b) => b - a))
    } finally {
      store.close()
    }
  }, 600_000)
})
