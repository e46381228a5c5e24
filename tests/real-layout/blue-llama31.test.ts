// pipelines/blue.ts, unchanged, on a directory laid out like meta-llama/Llama-3.1-8B-Instruct
// (published config.json with the sizes shrunk and vocab_size 128256 kept, bf16 shards + index,
// its chat template and special tokens; families.ts / fixture.ts), given with --set model.path:
// every node finishes and the baked model is closer to the prompted one than the base model is.
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { BakeComparison } from "../../stages/baking/artifacts.ts"
import { runBlue, smallBlue } from "../baking/blue-run.ts"
import { sandbox } from "../engine/helpers.ts"
import { families } from "./families.ts"
import { writeFixture } from "./fixture.ts"

const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

describe("pipelines/blue.ts on the Llama 3.1 layout", () => {
  it("runs end to end and the baked KL is below the base KL", async () => {
    const llama31 = families.find((f) => f.repo === "meta-llama/Llama-3.1-8B-Instruct")!
    const modelDir = path.join(sb.dir, "Llama-3.1-8B-Instruct")
    await writeFixture(llama31, modelDir)
    // three epochs at a higher rate: enough for six trajectories to move a random model
    const s = await runBlue(sb, [...smallBlue(modelDir), "lora-train.epochs=3", "lora-train.lr=0.03"])
    expect(s.nodes.filter((n) => n.status !== "succeeded").map((n) => `${n.name}: ${n.error}`)).toEqual([])
    const comparison = JSON.parse(fs.readFileSync(path.join(s.runDir, "compare.json"), "utf8")) as BakeComparison
    const kl = (v: string) => comparison.rows.find((r) => r.variant === v)!.kl
    expect(kl("base")).toBeGreaterThan(0)
    expect(kl("baked")).toBeLessThan(kl("base"))
  }, 180_000)
})
