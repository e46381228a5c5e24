// A tiny decoder-only transformer built with the graph DSL (token embedding, pre-norm
// blocks with causal multi-head attention + RoPE + RMSNorm + SwiGLU MLP, final norm, LM
// head). Used by the composite gradient check, the training tests and bench/graph.bench.ts.
// Weights are graph inputs so that any subset can be made trainable.
import type { DType, Graph, Value } from "../../src/graph/index.ts"
import { rng } from "./run.ts"

export interface TinyConfig {
  readonly vocab: number
  readonly dim: number
  readonly heads: number
  readonly layers: number
  readonly ffn: number
}

export const paramShapes = (c: TinyConfig): Record<string, number[]> => {
  const p: Record<string, number[]> = { embed: [c.vocab, c.dim] }
  for (let l = 0; l < c.layers; l++) {
    p[`l${l}.attn_norm`] = [c.dim]
    for (const w of ["wq", "wk", "wv", "wo"]) p[`l${l}.${w}`] = [c.dim, c.dim]
    p[`l${l}.mlp_norm`] = [c.dim]
    p[`l${l}.w_gate`] = [c.dim, c.ffn]
    p[`l${l}.w_up`] = [c.dim, c.ffn]
    p[`l${l}.w_down`] = [c.ffn, c.dim]
  }
  p.final_norm = [c.dim]
  p.lm_head = [c.vocab, c.dim] // Hugging Face layout: logits = h W^T
  return p
}

/** Random init: norms near 1, matrices ~ U(-1,1)/sqrt(fan_in). */
export const initParams = (c: TinyConfig, seed: number): Record<string, number[]> => {
  const r = rng(seed)
  const out: Record<string, number[]> = {}
  for (const [name, shape] of Object.entries(paramShapes(c))) {
    const n = shape.reduce((a, b) => a * b, 1)
    out[name] = name.endsWith("norm") ? Array.from({ length: n }, () => 1 + 0.1 * r()) : Array.from({ length: n }, () => (r() * (name === "embed" ? 1 : 1.5)) / Math.sqrt(name === "lm_head" ? shape[1] : shape[0]))
  }
  return out
}

/** Declares every parameter as a graph input. */
export const declareParams = (g: Graph, c: TinyConfig, dtype: DType): Record<string, Value> => {
  const out: Record<string, Value> = {}
  for (const [name, shape] of Object.entries(paramShapes(c))) out[name] = g.input(name, dtype, shape)
  return out
}

/** Rotary position embedding on [B, H, T, hd] (rotate-half convention). */
const rope = (g: Graph, x: Value, cos: Value, sin: Value, hd: number): Value => {
  const [x1, x2] = g.split(x, [hd / 2, hd / 2], -1)
  return g.concat([g.sub(g.mul(x1, cos), g.mul(x2, sin)), g.add(g.mul(x1, sin), g.mul(x2, cos))], -1)
}

/** Final (normalized) hidden states [B, T, dim] for token ids [B, T]. */
export const tinyTransformerHidden = (g: Graph, c: TinyConfig, p: Record<string, Value>, ids: Value): Value => {
  const dtype = p.embed.dtype
  const hd = c.dim / c.heads
  const T = g.shapeOf(ids, 1, 2)
  // RoPE tables [T, hd/2] and the additive causal mask [T, T], computed in the graph
  const pos = g.cast(g.range(g.constant("int64", [], [0]), g.reshape(T, []), g.constant("int64", [], [1])), dtype)
  const invFreq = g.constant(dtype, [hd / 2], Array.from({ length: hd / 2 }, (_, i) => 10000 ** ((-2 * i) / hd)))
  const angles = g.mul(g.unsqueeze(pos, [1]), invFreq)
  const cos = g.cos(angles)
  const sin = g.sin(angles)
  const ones = g.constantOfShape(g.concat([T, T], 0), 1, dtype, [null, null])
  const mask = g.where(g.equal(g.trilu(ones, false), g.scalar(0, dtype)), g.scalar(-1e9, dtype), g.scalar(0, dtype))
  const scale = g.scalar(1 / Math.sqrt(hd), dtype)
  const heads = (v: Value) => g.transpose(g.reshape(v, [0, 0, c.heads, hd]), [0, 2, 1, 3])
  let x = g.gather(p.embed, ids, 0)
  for (let l = 0; l < c.layers; l++) {
    const h = g.rmsNorm(x, p[`l${l}.attn_norm`], { epsilon: 1e-6 })
    const q = rope(g, heads(g.matMul(h, p[`l${l}.wq`])), cos, sin, hd)
    const k = rope(g, heads(g.matMul(h, p[`l${l}.wk`])), cos, sin, hd)
    const v = heads(g.matMul(h, p[`l${l}.wv`]))
    const scores = g.add(g.mul(g.matMul(q, g.transpose(k, [0, 1, 3, 2])), scale), mask)
    const att = g.matMul(g.softmax(scores, -1), v)
    const merged = g.reshape(g.transpose(att, [0, 2, 1, 3]), [0, 0, c.dim])
    x = g.add(x, g.matMul(merged, p[`l${l}.wo`]))
    const h2 = g.rmsNorm(x, p[`l${l}.mlp_norm`], { epsilon: 1e-6 })
    const gate = g.matMul(h2, p[`l${l}.w_gate`])
    const silu = g.mul(gate, g.sigmoid(gate))
    x = g.add(x, g.matMul(g.mul(silu, g.matMul(h2, p[`l${l}.w_up`])), p[`l${l}.w_down`]))
  }
  return g.rmsNorm(x, p.final_norm, { epsilon: 1e-6 })
}

/** Logits [B, T, vocab] for token ids [B, T]. */
export const tinyTransformer = (g: Graph, c: TinyConfig, p: Record<string, Value>, ids: Value): Value =>
  g.matMul(tinyTransformerHidden(g, c, p, ids), g.transpose(p.lm_head))
