// Composite check: a 2-layer transformer (causal attention, RoPE, RMSNorm, SwiGLU MLP)
// differentiated end to end w.r.t. every weight, against float64 finite differences.
import { describe, it } from "vitest"
import { gradCheck, type InputSpec } from "./gradcheck.ts"
import { initParams, paramShapes, type TinyConfig, tinyTransformer } from "./transformer.ts"

const cfg: TinyConfig = { vocab: 7, dim: 8, heads: 2, layers: 2, ffn: 12 }

describe("2-layer transformer", () => {
  it("matches finite differences for every weight", async () => {
    const init = initParams(cfg, 3)
    const inputs: Record<string, InputSpec> = { ids: { shape: [2, 4], declared: ["B", "T"], dtype: "int64", values: [1, 5, 2, 2, 6, 0, 3, 1] } }
    for (const [name, shape] of Object.entries(paramShapes(cfg))) inputs[name] = { shape, values: init[name] }
    await gradCheck({
      inputs,
      build: (g, x) => {
        const { ids, ...params } = x
        // symbolic batch/sequence dims exercise the run-time shape paths of the rules
        return g.reshape(tinyTransformer(g, cfg, params, ids), [2, 4, cfg.vocab])
      },
    })
  })
})
