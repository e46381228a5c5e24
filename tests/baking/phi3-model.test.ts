// pipelines/blue.ts on a random Phi-3 checkpoint (fused qkv_proj and gate_up_proj) given with
// --set model.path, carrying the tiny-chat tokenizer and chat template: the lora-train stage
// trains adapters on the fused modules (PEFT's Phi-3 target names) and the pipeline completes.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { runPipeline, silentReporter, Store } from "../../src/engine/index.ts"
import { tinyPhi3, writeRandomCheckpoint } from "../../src/models/init.ts"
import type { BakeComparison } from "../../stages/baking/artifacts.ts"
import { sandbox } from "../engine/helpers.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

describe("pipelines/blue.ts on a Phi-3 checkpoint", () => {
  it("trains LoRA on qkv_proj and gate_up_proj end to end", async () => {
    const modelDir = path.join(sb.dir, "phi3")
    // the tiny-chat tokenizer's ids: pad 0, bos 1, eos 2, 1024 tokens
    const config = tinyPhi3({ vocabSize: 1024, maxPositions: 128, bosTokenId: 1, eosTokenIds: [2], padTokenId: 0 })
    await Effect.runPromise(writeRandomCheckpoint(modelDir, config, { seed: 3 }))
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(repo, "models/tiny-chat", f), path.join(modelDir, f))
    const store = new Store(sb.cacheDir)
    const overrides = [
      `model.path=${modelDir}`,
      "train_questions.n=6",
      "validation_questions.n=3",
      "heldout_questions.n=3",
      "sample_train.n=1",
      "sample_train.maxNewTokens=12",
      "sample_validation.maxNewTokens=12",
      "lora-train.epochs=1",
      `lora-train.targetModules=["qkv_proj","o_proj","gate_up_proj","down_proj"]`,
      "evaluate_base.maxNewTokens=8",
      "evaluate_prompted.maxNewTokens=8",
      "evaluate_baked.maxNewTokens=8",
    ]
    const s = await Effect.runPromise(runPipeline({ store, pipelineFile: path.join(repo, "pipelines/blue.ts"), overrides, runsDir: sb.runsDir, reporter: silentReporter })).finally(() => store.close())
    expect(s.nodes.filter((n) => n.status !== "succeeded" && n.status !== "cached")).toEqual([])
    const comparison = JSON.parse(fs.readFileSync(path.join(s.runDir, "compare.json"), "utf8")) as BakeComparison
    expect(comparison.rows.map((r) => r.variant)).toEqual(["base", "prompted", "baked"])
    // the trained adapter moved the model: the baked KL differs from the base one
    expect(comparison.rows[2].kl).not.toBe(comparison.rows[0].kl)
  }, 180_000)
})
