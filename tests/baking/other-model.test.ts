// pipelines/blue.ts pointed at another local Hugging Face checkpoint with --set model.path: a
// random GPT-NeoX (another architecture, its own config.json) carrying the tiny-chat tokenizer
// and chat template. The pipeline file is unchanged; only the LoRA target modules must name
// GPT-NeoX's layers, and the error says so when they do not. Likewise a random Phi-3, whose
// adapters sit on the fused qkv_proj and gate_up_proj.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import type { ModelConfig } from "../../src/models/checkpoint.ts"
import { tinyGptNeox, tinyPhi3, writeRandomCheckpoint } from "../../src/models/init.ts"
import type { BakeComparison } from "../../stages/baking/artifacts.ts"
import { sandbox } from "../engine/helpers.ts"
import { runBlue, smallBlue } from "./blue-run.ts"

const repo = path.resolve(import.meta.dirname, "../..")
const sb = sandbox()
afterAll(() => fs.rmSync(sb.dir, { recursive: true, force: true }))

const run = (overrides: ReadonlyArray<string>) => runBlue(sb, overrides)

/** A random checkpoint of `config` in the sandbox, carrying the tiny-chat tokenizer and chat template. */
const randomModel = async (name: string, config: ModelConfig) => {
  const modelDir = path.join(sb.dir, name)
  await Effect.runPromise(writeRandomCheckpoint(modelDir, config, { seed: 3 }))
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.copyFileSync(path.join(repo, "models/tiny-chat", f), path.join(modelDir, f))
  return modelDir
}

/** The ids of the tiny-chat tokenizer: pad 0, bos 1, eos 2, 1024 tokens. */
const tinyChatIds = { vocabSize: 1024, maxPositions: 128, bosTokenId: 1, eosTokenIds: [2], padTokenId: 0 }

const expectCompleted = (s: { nodes: ReadonlyArray<{ status: string }>; runDir: string }) => {
  expect(s.nodes.filter((n) => n.status !== "succeeded" && n.status !== "cached")).toEqual([])
  const comparison = JSON.parse(fs.readFileSync(path.join(s.runDir, "compare.json"), "utf8")) as BakeComparison
  expect(comparison.rows.map((r) => r.variant)).toEqual(["base", "prompted", "baked"])
  return comparison
}

describe("pipelines/blue.ts on another checkpoint", () => {
  it("runs end to end on a random GPT-NeoX given with --set model.path", async () => {
    const modelDir = await randomModel("neox", tinyGptNeox(tinyChatIds))
    const small = smallBlue(modelDir)

    const wrongTargets = await run(small)
    const failed = wrongTargets.nodes.find((n) => n.status === "failed")
    expect(failed?.name).toBe("lora-train")
    expect(failed?.error).toMatch(/"q_proj" matches no linear layer of this GPTNeoXForCausalLM \(e\.g\. query_key_value, dense/)

    const s = await run([...small, `lora-train.targetModules=["query_key_value","dense"]`])
    const comparison = expectCompleted(s)
    // a random model still has a positive KL between its prompted and un-prompted distributions
    expect(comparison.rows[0].kl).toBeGreaterThan(0)
  }, 180_000)

  it("trains LoRA on a random Phi-3's fused qkv_proj and gate_up_proj (PEFT's Phi-3 target names)", async () => {
    const modelDir = await randomModel("phi3", tinyPhi3(tinyChatIds))
    const s = await run([...smallBlue(modelDir), `lora-train.targetModules=["qkv_proj","o_proj","gate_up_proj","down_proj"]`])
    const comparison = expectCompleted(s)
    // the trained adapter moved the model: the baked KL differs from the base one
    expect(comparison.rows[2].kl).not.toBe(comparison.rows[0].kl)
  }, 180_000)
})
