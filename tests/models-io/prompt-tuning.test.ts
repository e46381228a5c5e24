// PEFT prompt-tuning adapters (src/models/peft.ts writePromptTuning / readPromptTuning): the
// directory holds what PEFT's PromptTuningConfig and set_peft_model_state_dict read (the config
// fields, `prompt_embeddings` [num_virtual_tokens, token_dim] in a "pt"-format safetensors file),
// reading it back gives the same prompt bit for bit, and malformed or foreign adapters are refused
// naming the file and field.
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { fromNumbers, readFile, writeFile } from "../../src/core/safetensors.ts"
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROMPT_EMBEDDINGS, readPromptTuning, writePromptTuning } from "../../src/models/peft.ts"

const model = { numLayers: 4, numHeads: 4 }
const prompt = { k: 3, hiddenSize: 8, values: Float32Array.from({ length: 24 }, (_, i) => Math.sin(i) * 0.3), baseModelNameOrPath: "/models/tiny" }
const dir = () => fs.mkdtempSync(path.join(tmpdir(), "pipe-prompt-tuning-"))
const failure = async (e: Effect.Effect<unknown, { message: string }>) => {
  const r = await Effect.runPromise(Effect.result(e))
  if (r._tag === "Success") throw new Error("expected a failure")
  return r.failure.message
}

describe("PEFT prompt tuning", () => {
  it("writes PEFT's config and tensor, and reads them back exactly", async () => {
    const d = dir()
    await Effect.runPromise(writePromptTuning(d, prompt, model))
    const config = JSON.parse(fs.readFileSync(path.join(d, ADAPTER_CONFIG), "utf8"))
    expect(config).toMatchObject({
      peft_type: "PROMPT_TUNING",
      task_type: "CAUSAL_LM",
      num_virtual_tokens: 3,
      token_dim: 8,
      num_transformer_submodules: 1,
      num_attention_heads: 4,
      num_layers: 4,
      prompt_tuning_init: "RANDOM",
      base_model_name_or_path: "/models/tiny",
    })
    const file = await Effect.runPromise(readFile(path.join(d, ADAPTER_WEIGHTS)))
    expect([...file.tensors.keys()]).toEqual([PROMPT_EMBEDDINGS])
    expect(file.tensors.get(PROMPT_EMBEDDINGS)!.shape).toEqual([3, 8])
    expect(file.tensors.get(PROMPT_EMBEDDINGS)!.dtype).toBe("F32")
    expect(file.metadata.format).toBe("pt")
    const back = await Effect.runPromise(readPromptTuning(d, 8))
    expect(back).toEqual(prompt)
  })

  it("refuses other PEFT types, another hidden size, a missing or misshapen tensor", async () => {
    const d = dir()
    await Effect.runPromise(writePromptTuning(d, prompt, model))
    expect(await failure(readPromptTuning(d, 16))).toBe(`${path.join(d, ADAPTER_CONFIG)}: token_dim: 8, but the model's hidden size is 16`)
    const configFile = path.join(d, ADAPTER_CONFIG)
    const config = JSON.parse(fs.readFileSync(configFile, "utf8"))
    fs.writeFileSync(configFile, JSON.stringify({ ...config, peft_type: "LORA" }))
    expect(await failure(readPromptTuning(d))).toBe(`${configFile}: peft_type: "LORA", expected "PROMPT_TUNING"`)
    fs.writeFileSync(configFile, JSON.stringify({ ...config, num_transformer_submodules: 2 }))
    expect(await failure(readPromptTuning(d))).toContain("num_transformer_submodules: unsupported: 2")
    fs.writeFileSync(configFile, JSON.stringify(config))
    const weights = path.join(d, ADAPTER_WEIGHTS)
    await Effect.runPromise(writeFile(weights, new Map([[PROMPT_EMBEDDINGS, fromNumbers(new Float32Array(16), "F32", [2, 8])]])))
    expect(await failure(readPromptTuning(d))).toBe(`${weights}: ${PROMPT_EMBEDDINGS}: shape [2, 8], expected [num_virtual_tokens, token_dim] = [3, 8]`)
    await Effect.runPromise(writeFile(weights, new Map([["other", fromNumbers(new Float32Array(24), "F32", [3, 8])]])))
    expect(await failure(readPromptTuning(d))).toBe(`${weights}: ${PROMPT_EMBEDDINGS}: missing (tensors: other)`)
    fs.rmSync(weights)
    expect(await failure(readPromptTuning(d))).toBe(`${weights}: missing`)
  })
})
