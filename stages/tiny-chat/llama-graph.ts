// The Llama forward pass the tiny-chat stages train and sample with: weights are graph inputs
// named as in a Hugging Face LlamaForCausalLM checkpoint (so any subset can be made trainable and
// the trained values are written back under the standard names), RoPE with the rotate_half
// pairing, RMSNorm, gated SiLU MLP, tied or separate LM head. Sequences are right-padded: the
// causal mask keeps padding from reaching real positions, and losses mask padded targets.
import type { Graph, Value } from "../../src/graph/index.ts"
import type { ModelConfig } from "../../src/models/checkpoint.ts"

/** HF tensor names and shapes of a Llama checkpoint (lm_head only when embeddings are untied). */
export const llamaParamShapes = (c: ModelConfig): Record<string, number[]> => {
  const h = c.hiddenSize
  const q = c.numHeads * c.headDim
  const kv = c.numKvHeads * c.headDim
  const p: Record<string, number[]> = { "model.embed_tokens.weight": [c.vocabSize, h] }
  for (let l = 0; l < c.numLayers; l++) {
    const pre = `model.layers.${l}`
    p[`${pre}.input_layernorm.weight`] = [h]
    p[`${pre}.self_attn.q_proj.weight`] = [q, h]
    p[`${pre}.self_attn.k_proj.weight`] = [kv, h]
    p[`${pre}.self_attn.v_proj.weight`] = [kv, h]
    p[`${pre}.self_attn.o_proj.weight`] = [h, q]
    p[`${pre}.post_attention_layernorm.weight`] = [h]
    p[`${pre}.mlp.gate_proj.weight`] = [c.intermediateSize, h]
    p[`${pre}.mlp.up_proj.weight`] = [c.intermediateSize, h]
    p[`${pre}.mlp.down_proj.weight`] = [h, c.intermediateSize]
  }
  p["model.norm.weight"] = [h]
  if (!c.tiedEmbeddings) p["lm_head.weight"] = [c.vocabSize, h]
  return p
}

/** Norm scales are not weight-decayed. */
export const isNormParam = (name: string): boolean => name.endsWith("layernorm.weight") || name === "model.norm.weight"

/** The LM head weight [V, H]: the token embedding when tied. */
export const lmHeadOf = (c: ModelConfig, p: Readonly<Record<string, Value>>): Value => (c.tiedEmbeddings ? p["model.embed_tokens.weight"] : p["lm_head.weight"])

/** Final normalized hidden states [B, T, H] for right-padded token ids [B, T] (int64). */
export const llamaHidden = (g: Graph, c: ModelConfig, p: Readonly<Record<string, Value>>, ids: Value): Value => {
  if (c.numKvHeads !== c.numHeads) throw new Error(`llamaHidden: grouped-query attention (${c.numKvHeads} kv heads for ${c.numHeads}) is not supported here`)
  if (c.positions.kind !== "rope" || c.positions.scaling.kind !== "none") throw new Error("llamaHidden: needs plain RoPE positions")
  const hd = c.headDim
  const eps = c.norm.eps
  const T = g.shapeOf(ids, 1, 2)
  // RoPE tables [T, hd/2] and the additive causal mask [T, T], computed in the graph.
  const pos = g.cast(g.range(g.constant("int64", [], [0]), g.reshape(T, []), g.constant("int64", [], [1])), "float32")
  const theta = c.positions.theta
  const invFreq = g.constant("float32", [hd / 2], Array.from({ length: hd / 2 }, (_, i) => theta ** ((-2 * i) / hd)))
  const angles = g.mul(g.unsqueeze(pos, [1]), invFreq)
  const cos = g.cos(angles)
  const sin = g.sin(angles)
  const ones = g.constantOfShape(g.concat([T, T], 0), 1, "float32", [null, null])
  const mask = g.where(g.equal(g.trilu(ones, false), g.scalar(0)), g.scalar(-1e9), g.scalar(0))
  const scale = g.scalar(1 / Math.sqrt(hd))
  const heads = (v: Value) => g.transpose(g.reshape(v, [0, 0, c.numHeads, hd]), [0, 2, 1, 3])
  const rope = (x: Value) => {
    const [x1, x2] = g.split(x, [hd / 2, hd / 2], -1)
    return g.concat([g.sub(g.mul(x1, cos), g.mul(x2, sin)), g.add(g.mul(x1, sin), g.mul(x2, cos))], -1)
  }
  let x = g.gather(p["model.embed_tokens.weight"], ids, 0)
  for (let l = 0; l < c.numLayers; l++) {
    const w = (name: string) => p[`model.layers.${l}.${name}.weight`]
    const h = g.rmsNorm(x, w("input_layernorm"), { epsilon: eps })
    const q = rope(heads(g.linear(h, w("self_attn.q_proj"))))
    const k = rope(heads(g.linear(h, w("self_attn.k_proj"))))
    const v = heads(g.linear(h, w("self_attn.v_proj")))
    const scores = g.add(g.mul(g.matMul(q, g.transpose(k, [0, 1, 3, 2])), scale), mask)
    const att = g.matMul(g.softmax(scores, -1), v)
    const merged = g.reshape(g.transpose(att, [0, 2, 1, 3]), [0, 0, c.numHeads * hd])
    x = g.add(x, g.linear(merged, w("self_attn.o_proj")))
    const h2 = g.rmsNorm(x, w("post_attention_layernorm"), { epsilon: eps })
    const gate = g.linear(h2, w("mlp.gate_proj"))
    const silu = g.mul(gate, g.sigmoid(gate))
    x = g.add(x, g.linear(g.mul(silu, g.linear(h2, w("mlp.up_proj"))), w("mlp.down_proj")))
  }
  return g.rmsNorm(x, p["model.norm.weight"], { epsilon: eps })
}
