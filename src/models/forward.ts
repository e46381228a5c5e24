// The decoder forward pass of every supported architecture (Llama family with Qwen2/3, Phi-3,
// Gemma 2/3, GPT-2, GPT-NeoX) as ONNX graph functions, built from a loaded checkpoint's normalized
// config and weight layout. RoPE and its scalings live in rope.ts.
//
// API
//   decoder(g, config, weights, source, inputs, options?) -> { hidden, lmHead, logitSoftcap, present }
//     Builds the forward into graph `g` (or a Loop/If subgraph of it) from graph values:
//       inputs.ids    int64 [B, T]            token ids            (or inputs.embeds float32 [B, T, H],
//                                             HF's inputs_embeds: see tokenEmbeddings)
//       inputs.mask   int64 [B, P + T]        1 = real token, 0 = padding; LEFT padding supported
//       inputs.past   per layer {key, value}  float32 [B, kvHeads, P, headDim] (omit: P = 0)
//       inputs.positions  int64 [B, T]        optional override of the position ids
//     Position ids are derived in-graph from the mask (cumsum(mask) - 1, clamped at 0), so a
//     left-padded row gets the same positions, and hence the same outputs, as the unpadded row.
//     Returns final normalized hidden states [B, T, H], the LM head weight [V, H] (for the
//     chunked losses in src/graph/losses.ts: logits = hidden lmHead^T) and the present K/V per
//     layer ([B, kvHeads, P + T, headDim], RoPE already applied to keys).
//     `source` turns each WeightRef into a float32 graph value of the stored shape:
//       externalWeights(g, placement)  frozen weights as ONNX external data (see graph-weights.ts)
//       inputWeights(g) / paramWeights(params)  weights as graph inputs named by their checkpoint
//                                      tensor names, in the stored layout (GPT-2 Conv1D: [in, out]),
//                                      for full-parameter training via buildTrainStep
//                                      (allWeightRefs lists them, tied weights once)
//       paramWeights(params, externalWeights(g, placement)) mixes trainable and frozen weights.
//     options.linearHook(g, site, x, y) may rewrite the output y of any block linear layer
//     (LoRA: adapters.ts loraHook); site.module is the HF module path PEFT matches.
//     Calling decoder twice on one source gives a teacher (no hook) and a student in one graph.
//
//   buildForwardGraph(g, ckpt, placement, options) -> DecoderOutputs; declares in g the named
//     inputs/outputs of forwardNames, then write g with graph-weights.ts writeGraph:
//     "input_ids" | "inputs_embeds", "attention_mask", "past_key_values.{l}.key|value" (cache),
//     outputs "logits" [B,T,V] or "hidden" [B,T,H], "present.{l}.key|value" (cache).
//
// Numerics: float32 throughout; fp16/bf16 weights are cast to float32 in-graph (onnxruntime's
// CPU provider has no bf16 arithmetic). Masked attention uses an additive -1e9 bias, not -inf,
// so fully masked (padding) query rows stay finite.
//
// Sliding-window layers (config.slidingWindow) mask by position distance (key position > query
// position - window, positions from the mask). transformers masks by cache column; the two agree
// where a row's real tokens are contiguous (plain left padding), and positions stay right where
// padding sits inside a row (variant.ts: between a soft prompt and the tokens). The cache keeps
// every column; a decode step's window is applied by the mask, so prefill, decode and training
// share one rule.
// Gemma (config.gemma): see GemmaFeatures. Its final logit soft-capping is applied wherever
// logits are formed from `hidden` and `lmHead`: callers pass DecoderOutputs.logitSoftcap on
// (LmHead.softcap for the chunked losses, positionStats' logitSoftcap argument, logitsOf).
import { type Graph, softcap, type Value } from "../graph/index.ts"
import type { Checkpoint, Linear, ModelConfig, ModelWeights, Norm, WeightRef } from "./checkpoint.ts"
import { mlpLinears } from "./config-architecture.ts"
import { externalWeights, type WeightPlacement } from "./graph-weights.ts"
import { ropeRotation } from "./rope.ts"
import { modulePath } from "./peft.ts"

/** Turns a checkpoint weight into a float32 graph value with the shape stored in the file. */
export type WeightSource = (ref: WeightRef) => Value

/** Which linear layer of the network a hook sees: the HF module path is what PEFT matches. */
export interface LinearSite {
  readonly layer: number
  /** HF module path, e.g. "model.layers.0.self_attn.q_proj" (the weight name without ".weight") */
  readonly module: string
  readonly inFeatures: number
  readonly outFeatures: number
  readonly weight: WeightRef
}

/** Gets the linear layer's input x [..., in] and output y [..., out]; returns the new output. */
export type LinearHook = (g: Graph, site: LinearSite, x: Value, y: Value) => Value

export interface DecoderInputs {
  readonly ids?: Value
  readonly embeds?: Value
  readonly mask: Value
  /** int64 [B, T]; default: derived from the mask (see the file header) */
  readonly positions?: Value
  readonly past?: ReadonlyArray<{ readonly key: Value; readonly value: Value }>
}

export interface DecoderOptions {
  readonly linearHook?: LinearHook
}

export interface DecoderOutputs {
  readonly hidden: Value
  readonly lmHead: Value
  /** logits = softcap(hidden lmHead^T, logitSoftcap) when defined (Gemma 2 final_logit_softcapping) */
  readonly logitSoftcap: number | undefined
  readonly present: ReadonlyArray<{ readonly key: Value; readonly value: Value }>
}

/** Weights as float32 graph inputs named by their checkpoint tensor names (one per distinct name). */
export const inputWeights = (g: Graph): WeightSource => {
  const made = new Map<string, Value>()
  return (ref) => {
    let v = made.get(ref.name)
    if (!v) {
      v = g.input(ref.name, "float32", [...ref.shape])
      made.set(ref.name, v)
    }
    return v
  }
}

/** Weights from a name -> value record (e.g. the params buildTrainStep hands to its loss). */
export const paramWeights = (params: Readonly<Record<string, Value>>, fallback?: WeightSource): WeightSource => (ref) => {
  const v = params[ref.name]
  if (v) return v
  if (fallback) return fallback(ref)
  throw new Error(`forward: no value for weight "${ref.name}" (neither a parameter nor a frozen weight)`)
}

/** Every distinct weight of a model, in a stable order (tied weights once). */
export const allWeightRefs = (w: ModelWeights): WeightRef[] => {
  const out = new Map<string, WeightRef>()
  const add = (r: WeightRef | undefined) => {
    if (r && !out.has(r.name)) out.set(r.name, r)
  }
  const lin = (l: Linear | Norm) => {
    add(l.weight)
    add(l.bias)
  }
  add(w.embedTokens)
  add(w.embedPositions)
  for (const l of w.layers) {
    lin(l.inputNorm)
    const a = l.attention
    for (const x of a.layout === "separate" ? [a.q, a.k, a.v, a.o] : [a.qkv, a.o]) lin(x)
    lin(l.postAttentionNorm)
    for (const n of [l.outputNorms?.attention, l.outputNorms?.mlp, l.headNorms?.q, l.headNorms?.k]) if (n) lin(n)
    for (const x of mlpLinears(l.mlp)) lin(x)
  }
  lin(w.finalNorm)
  add(w.lmHead)
  return [...out.values()]
}

const activation = (g: Graph, c: ModelConfig, x: Value): Value => {
  switch (c.activation) {
    case "silu":
      return g.mul(x, g.sigmoid(x))
    case "gelu_erf":
      return g.mul(g.mul(x, g.scalar(0.5)), g.add(g.scalar(1), g.erf(g.mul(x, g.scalar(Math.SQRT1_2)))))
    case "relu":
      return g.relu(x)
    case "gelu_tanh": {
      const inner = g.mul(g.scalar(Math.sqrt(2 / Math.PI)), g.add(x, g.mul(g.scalar(0.044715), g.mul(x, g.mul(x, x)))))
      return g.mul(g.mul(x, g.scalar(0.5)), g.add(g.scalar(1), g.tanh(inner)))
    }
  }
}

/**
 * Gemma's embedding factor sqrt(hiddenSize), rounded to the embedding weight's dtype the way HF's
 * torch.tensor(hidden_size**0.5, dtype=...) rounds it (sqrt(3072) = 55.4256 is 55.5 in bf16).
 */
export const gemmaEmbedScale = (hiddenSize: number, dtype: WeightRef["dtype"]): number => {
  const x = Math.sqrt(hiddenSize)
  const bits = dtype === "BF16" ? 8 : dtype === "F16" ? 11 : dtype === "F64" ? 53 : 24
  // round to `bits` significant bits, ties to even (the scale is a normal number in every dtype)
  const step = 2 ** (Math.floor(Math.log2(x)) - bits + 1)
  const q = x / step
  const r = Math.round(q)
  return (r - q === 0.5 && r % 2 !== 0 ? r - 1 : r) * step
}

/**
 * What HF's input embedding module returns for `ids` [B, T] (its inputs_embeds, what
 * DecoderInputs.embeds takes): Gemma 3's scaled embedding includes the sqrt(hidden) factor,
 * Gemma 2 applies it in the decoder instead, to whatever embeddings it is given.
 */
export const tokenEmbeddings = (g: Graph, c: ModelConfig, w: ModelWeights, source: WeightSource, ids: Value): Value => {
  const e = g.gather(source(w.embedTokens), ids, 0)
  return c.gemma?.embedScale === "token_embeddings" ? g.mul(e, g.scalar(gemmaEmbedScale(c.hiddenSize, w.embedTokens.dtype))) : e
}

/** Builds the decoder into `g`; see the file header. */
export const decoder = (g: Graph, c: ModelConfig, w: ModelWeights, source: WeightSource, inputs: DecoderInputs, options: DecoderOptions = {}): DecoderOutputs => {
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = c
  const group = nh / nkv
  if (!Number.isInteger(group)) throw new Error(`forward: ${nh} heads is not a multiple of ${nkv} key/value heads`)
  if (inputs.past && inputs.past.length !== c.numLayers) throw new Error(`forward: ${inputs.past.length} past K/V pairs for ${c.numLayers} layers`)

  // Gemma's RMSNorm multiplies by (1 + w)
  const normScale = (n: Norm) => (c.gemma ? g.add(source(n.weight), g.scalar(1)) : source(n.weight))
  const norm = (n: Norm, x: Value) =>
    c.norm.kind === "rms" ? g.rmsNorm(x, normScale(n), { epsilon: c.norm.eps }) : g.layerNorm(x, source(n.weight), n.bias ? source(n.bias) : null, { epsilon: c.norm.eps })
  /** RMSNorm of each head of q or k [B, n, T, headDim] over headDim (Qwen3, Gemma 3: q_norm / k_norm). */
  const headRmsNorm = (n: Norm, v: Value) => g.rmsNorm(v, normScale(n), { epsilon: c.norm.eps })
  const linear = (layer: number, l: Linear, x: Value) => {
    const W = source(l.weight)
    const b = l.bias ? source(l.bias) : null
    // GPT-2 Conv1D stores W^T [in, out]
    const y = l.weight.transposed ? (b ? g.add(g.matMul(x, W), b) : g.matMul(x, W)) : g.linear(x, W, b)
    if (!options.linearHook) return y
    const [a, bb] = l.weight.shape
    const site: LinearSite = {
      layer,
      module: modulePath(c, l.weight),
      inFeatures: l.weight.transposed ? a : bb,
      outFeatures: l.weight.transposed ? bb : a,
      weight: l.weight,
    }
    return options.linearHook(g, site, x, y)
  }

  // --- embeddings, positions and the attention bias
  const mask = inputs.mask
  let x: Value
  if (inputs.ids) x = tokenEmbeddings(g, c, w, source, inputs.ids)
  else if (inputs.embeds) x = inputs.embeds.dtype === "float32" ? inputs.embeds : g.cast(inputs.embeds, "float32")
  else throw new Error("forward: give either ids or embeds")
  if (c.gemma?.embedScale === "all_inputs") x = g.mul(x, g.scalar(gemmaEmbedScale(c.hiddenSize, w.embedTokens.dtype)))
  const T = g.shapeOf(x, 1, 2) // [1]
  const S = g.shapeOf(mask, 1, 2) // [1], = P + T
  const P = g.sub(S, T)
  const one = g.constant("int64", [], [1])
  const zero = g.constant("int64", [], [0])
  const scalarOf = (v: Value) => g.reshape(v, [])
  // positions: cumsum(mask) - 1 clamped at 0, last T columns
  const columnPositions = g.max(g.sub(g.cumSum(mask, 1), one), zero) // [B, S]
  const positions = inputs.positions ?? g.slice(columnPositions, P, S, [1]) // [B, T]
  if (w.embedPositions) x = g.add(x, g.gather(source(w.embedPositions), positions, 0))
  // key j is visible to query i when it is real and j <= P + i
  const qAbs = g.range(scalarOf(P), scalarOf(S), one) // [T]
  const kAbs = g.range(zero, scalarOf(S), one) // [S]
  const causal = g.lessOrEqual(g.unsqueeze(kAbs, [0]), g.unsqueeze(qAbs, [1])) // [T, S]
  const real = g.unsqueeze(g.greater(mask, zero), [1]) // [B, 1, S]
  const visible = g.and(causal, real) // [B, T, S]
  const maskBias = (v: Value) => g.unsqueeze(g.where(v, g.scalar(0), g.scalar(-1e9)), [1, 2]) // [B, 1, 1, T, S]
  const bias = maskBias(visible)
  // sliding-window layers also need key position > query position - window
  const window = c.slidingWindow
  const localBias = window
    ? maskBias(g.and(visible, g.greater(g.unsqueeze(columnPositions, [1]), g.unsqueeze(g.sub(positions, g.constant("int64", [], [window.size])), [2]))))
    : bias
  const isLocal = (layer: number) => window?.layers[layer] === true

  const globalRope = c.positions.kind === "rope" ? ropeRotation(g, c.positions, hd, positions) : undefined
  // Gemma 3: local layers rotate with their own base
  const localRope = c.gemma?.localPositions?.kind === "rope" ? ropeRotation(g, c.gemma.localPositions, hd, positions) : globalRope

  const scale = g.scalar(c.gemma ? c.gemma.queryPreAttnScalar ** -0.5 : 1 / Math.sqrt(hd))
  const attnSoftcap = c.gemma?.attnLogitSoftcap
  /** [B, T, n*hd] -> [B, n, T, hd] */
  const heads = (v: Value, n: number) => g.transpose(g.reshape(v, [0, 0, n, hd]), [0, 2, 1, 3])
  const present: { key: Value; value: Value }[] = []

  const attention = (layer: number, h: Value): Value => {
    const { attention: a, headNorms } = w.layers[layer]
    let q: Value, k: Value, v: Value
    if (a.layout === "separate") {
      q = heads(linear(layer, a.q, h), nh)
      k = heads(linear(layer, a.k, h), nkv)
      v = heads(linear(layer, a.v, h), nkv)
    } else if (a.layout === "fused_qkv") {
      // GPT-2, Phi-3: [q | k | v]
      const [q0, k0, v0] = g.split(linear(layer, a.qkv, h), [nh * hd, nkv * hd, nkv * hd], -1)
      q = heads(q0, nh)
      k = heads(k0, nkv)
      v = heads(v0, nkv)
    } else {
      // GPT-NeoX: per head [q | k | v] of headDim each
      const perHead = g.reshape(linear(layer, a.qkv, h), [0, 0, nh, 3 * hd])
      const [q0, k0, v0] = g.split(perHead, [hd, hd, hd], -1)
      q = g.transpose(q0, [0, 2, 1, 3])
      k = g.transpose(k0, [0, 2, 1, 3])
      v = g.transpose(v0, [0, 2, 1, 3])
    }
    if (headNorms) {
      q = headRmsNorm(headNorms.q, q)
      k = headRmsNorm(headNorms.k, k)
    }
    const rope = isLocal(layer) ? localRope : globalRope
    if (rope) {
      q = rope(q)
      k = rope(k)
    }
    const past = inputs.past?.[layer]
    if (past) {
      k = g.concat([past.key, k], 2)
      v = g.concat([past.value, v], 2)
    }
    present.push({ key: k, value: v })
    // grouped-query attention by broadcasting: q [B, kv, group, T, hd] against k, v [B, kv, 1, S, hd]
    const q5 = g.reshape(q, [0, nkv, group, -1, hd])
    const scaled = g.mul(g.matMul(q5, g.unsqueeze(g.transpose(k, [0, 1, 3, 2]), [2])), scale)
    const scores = g.add(attnSoftcap === undefined ? scaled : softcap(g, scaled, attnSoftcap), isLocal(layer) ? localBias : bias)
    const att = g.matMul(g.softmax(scores, -1), g.unsqueeze(v, [2])) // [B, kv, group, T, hd]
    const merged = g.reshape(g.transpose(g.reshape(att, [0, nh, -1, hd]), [0, 2, 1, 3]), [0, 0, nh * hd])
    return linear(layer, a.o, merged)
  }

  const mlp = (layer: number, h: Value): Value => {
    const m = w.layers[layer].mlp
    if (m.kind === "gated_fused") {
      // Phi-3: [gate | up]
      const [gate, up] = g.split(linear(layer, m.gateUp, h), [c.intermediateSize, c.intermediateSize], -1)
      return linear(layer, m.down, g.mul(activation(g, c, gate), up))
    }
    const up = linear(layer, m.up, h)
    const inner = m.kind === "gated" ? g.mul(activation(g, c, linear(layer, m.gate, h)), up) : activation(g, c, up)
    return linear(layer, m.down, inner)
  }

  for (let l = 0; l < c.numLayers; l++) {
    const layer = w.layers[l]
    const attn = attention(l, norm(layer.inputNorm, x))
    if (c.parallelResidual) x = g.add(g.add(x, attn), mlp(l, norm(layer.postAttentionNorm, x)))
    else {
      const out = layer.outputNorms
      x = g.add(x, out ? norm(out.attention, attn) : attn)
      const m = mlp(l, norm(layer.postAttentionNorm, x))
      x = g.add(x, out ? norm(out.mlp, m) : m)
    }
  }
  return { hidden: norm(w.finalNorm, x), lmHead: source(w.lmHead), present, logitSoftcap: c.gemma?.finalLogitSoftcap }
}

/** Applies the model's final logit soft-capping (if any) to logits computed from `out`. */
export const logitsOf = (g: Graph, out: DecoderOutputs, logits: Value): Value =>
  out.logitSoftcap === undefined ? logits : softcap(g, logits, out.logitSoftcap)

/** Input and output names of buildForwardGraph's graph. */
export const forwardNames = {
  ids: "input_ids",
  embeds: "inputs_embeds",
  mask: "attention_mask",
  pastKey: (l: number) => `past_key_values.${l}.key`,
  pastValue: (l: number) => `past_key_values.${l}.value`,
  presentKey: (l: number) => `present.${l}.key`,
  presentValue: (l: number) => `present.${l}.value`,
  logits: "logits",
  hidden: "hidden",
} as const

export interface ForwardGraphOptions {
  /** "ids" (default): input_ids [B,T]; "embeds": inputs_embeds [B,T,H] */
  readonly input?: "ids" | "embeds"
  /** "logits" (default) [B,T,V] or "hidden" [B,T,H] (then the LM head is the caller's business) */
  readonly output?: "logits" | "hidden"
  /** past/present K/V inputs and outputs */
  readonly cache?: boolean
  /** weights as graph inputs named by tensor name instead of external data */
  readonly weightsAsInputs?: boolean
  readonly linearHook?: LinearHook
}

/**
 * A complete forward graph with the names of forwardNames. `placement` says where the .onnx will
 * be written relative to the weight files (see graph-weights.ts); it is unused when
 * weightsAsInputs is set.
 */
export const buildForwardGraph = (g: Graph, ckpt: Checkpoint, placement: WeightPlacement | undefined, options: ForwardGraphOptions = {}): DecoderOutputs => {
  const c = ckpt.config
  const source = options.weightsAsInputs ? inputWeights(g) : placement ? externalWeights(g, placement) : undefined
  if (!source) throw new Error("buildForwardGraph: external weights need a placement")
  const ids = options.input === "embeds" ? undefined : g.input(forwardNames.ids, "int64", ["batch", "seq"])
  const embeds = options.input === "embeds" ? g.input(forwardNames.embeds, "float32", ["batch", "seq", c.hiddenSize]) : undefined
  const mask = g.input(forwardNames.mask, "int64", ["batch", "total"])
  const past = options.cache
    ? Array.from({ length: c.numLayers }, (_, l) => ({
        key: g.input(forwardNames.pastKey(l), "float32", ["batch", c.numKvHeads, "past", c.headDim]),
        value: g.input(forwardNames.pastValue(l), "float32", ["batch", c.numKvHeads, "past", c.headDim]),
      }))
    : undefined
  const out = decoder(g, c, ckpt.weights, source, { ids, embeds, mask, past }, { linearHook: options.linearHook })
  if (options.output === "hidden") g.outputAs(forwardNames.hidden, out.hidden)
  else g.outputAs(forwardNames.logits, logitsOf(g, out, g.matMul(out.hidden, g.transpose(out.lmHead, [1, 0]))))
  if (options.cache)
    out.present.forEach((p, l) => {
      g.outputAs(forwardNames.presentKey(l), p.key)
      g.outputAs(forwardNames.presentValue(l), p.value)
    })
  return out
}
