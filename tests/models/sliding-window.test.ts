// Sliding-window attention (Mistral on every layer, Qwen2 from max_window_layers on) against the
// float64 reference, on sequences several windows long: the full forward (also left-padded in a
// batch), and the KV-cache decode one token at a time against the full forward, where every decode
// step past the window must drop the oldest cached keys.
// Tolerance 1e-4 absolute on O(1) logits: float32 graph vs float64 reference, as forward.test.ts.
import { describe, expect, it } from "vitest"
import type { ModelConfig } from "../../src/models/checkpoint.ts"
import { tinyLlama } from "../../src/models/init.ts"
import { referenceLogits } from "../reference/reference.ts"
import { expectClose, expectPaddedForwardMatchesReference, forwardSession, incrementalLogits, randomCheckpoint } from "./forward-helpers.ts"

const TOL = 1e-4
const seq = [1, 7, 3, 60, 12, 5, 33, 41, 8, 19, 22]

const cases: Array<[string, ModelConfig]> = [
  ["Mistral, window 3 on every layer", tinyLlama({ hfArchitecture: "MistralForCausalLM", slidingWindow: { size: 3, layers: [true, true] } })],
  [
    "Qwen2, window 4 from layer 1",
    tinyLlama({ hfArchitecture: "Qwen2ForCausalLM", bias: { qkv: true, o: false, mlp: false, norm: false }, slidingWindow: { size: 4, layers: [false, true] } }),
  ],
]

describe("sliding-window attention", () => {
  for (const [name, config] of cases) {
    it(`${name}: forward equals the reference, alone and left-padded in a batch`, async () => {
      const ckpt = await randomCheckpoint(config)
      const want = await expectPaddedForwardMatchesReference(ckpt, seq, 5, TOL)
      // the window matters: without it the last positions differ
      const full = referenceLogits((await randomCheckpoint({ ...config, slidingWindow: undefined })).dir, seq)
      expect(Math.max(...want.at(-1)!.map((v, i) => Math.abs(v - full.at(-1)![i])))).toBeGreaterThan(1e-3)
    })

    it(`${name}: KV-cache decode past the window equals the full forward`, async () => {
      const ckpt = await randomCheckpoint(config)
      const rows = await incrementalLogits(await forwardSession(ckpt, { cache: true }), config, seq.slice(0, 2), seq.slice(2))
      expectClose(rows, referenceLogits(ckpt.dir, seq), TOL)
    })
  }
})
