// Language-model losses as graph functions. Each takes final hidden states [N, H] and the
// LM head weight [V, H] (Hugging Face layout: logits = h W^T) and works chunk by chunk over
// the N positions (chunkedSum), so [N x V] logits are never materialized. Arithmetic is in
// float32 (float64 inputs stay float64, for gradient checks); half-precision inputs are cast.
import type { Graph } from "./builder.ts"
import { chunkedSum } from "./chunked.ts"
import type { DType } from "./dtype.ts"
import type { Value } from "./ir.ts"

export interface LmHead {
  /** final hidden states [N, H] */
  readonly hidden: Value
  /** LM head weight [V, H] */
  readonly weight: Value
  /** logits = softcap(h W^T, softcap) when defined (Gemma 2 final_logit_softcapping) */
  readonly softcap?: number
}

export interface LossOptions {
  /** positions per chunk: peak memory holds about chunk x V floats per live logits block */
  readonly chunk?: number
}

export interface MeanLoss {
  /** sum over counted positions */
  readonly sum: Value
  /** number of counted positions (mask sum) */
  readonly count: Value
  /** sum / max(count, 1) */
  readonly mean: Value
}

const DEFAULT_CHUNK = 256

const computeType = (v: Value): DType => (v.dtype === "float64" ? "float64" : "float32")
const toCompute = (g: Graph, v: Value, t: DType): Value => (v.dtype === t ? v : g.cast(v, t))

/** cap * tanh(x / cap): bounds x to (-cap, cap), about the identity for |x| << cap. */
export const softcap = (g: Graph, x: Value, cap: number): Value => g.mul(g.tanh(g.div(x, g.scalar(cap, x.dtype))), g.scalar(cap, x.dtype))

/** logits [C, V] of one chunk */
const chunkLogits = (sub: Graph, h: Value, w: Value, t: DType, cap: number | undefined): Value => {
  const z = sub.gemm(toCompute(sub, h, t), toCompute(sub, w, t), null, { transB: true })
  return cap === undefined ? z : softcap(sub, z, cap)
}

const floatMask = (g: Graph, mask: Value | undefined, like: Value, t: DType): Value => {
  if (!mask) return g.constantOfShape(g.shapeOf(like, 0, 1), 1, t, [like.shape[0]])
  return mask.dtype === t ? mask : g.cast(mask, t)
}

const meanOf = (g: Graph, sum: Value, count: Value): MeanLoss => ({ sum, count, mean: g.div(sum, g.max(count, g.scalarLike(1, count))) })

/** log q [C, V] of a chunk's logits. LogSoftmax rather than z - ReduceLogSumExp(z): onnxruntime's
 * CPU LogSoftmax is vectorized and about 10x faster than its ReduceLogSumExp on [256, 2048]
 * (0.22 against 2.3 ms, 1 thread), which made the log-normalizer 6% of a LoRA train step. */
const logProbs = (sub: Graph, z: Value): Value => sub.logSoftmax(z, 1)

/**
 * Token-level cross-entropy -log q(target) averaged over positions whose mask is non-zero.
 * Masked positions may hold any target id (e.g. -100): they are never looked up.
 */
export const crossEntropy = (g: Graph, head: LmHead, targets: Value, mask?: Value, opts: LossOptions = {}): MeanLoss => {
  const t = computeType(head.hidden)
  const m = floatMask(g, mask, targets, t)
  const safeTargets = g.where(g.greater(m, g.scalar(0, t)), targets, g.constantOfShape(g.shapeOf(targets), 0, "int64", targets.shape))
  const sum = chunkedSum(g, {
    rows: [head.hidden, safeTargets, m],
    shared: [head.weight],
    chunk: opts.chunk ?? DEFAULT_CHUNK,
    dtype: t,
    perRowShape: [],
    body: (sub, [h, tgt, mk], [w]) => {
      const z = chunkLogits(sub, h, w, t, head.softcap)
      const lqt = sub.gatherElements(logProbs(sub, z), sub.unsqueeze(tgt, [1]), 1)
      return sub.mul(sub.neg(sub.squeeze(lqt, [1])), mk)
    },
  })
  return meanOf(g, sum, g.reduceSum(m))
}

/** The teacher's distribution as stored: top-k log-probabilities plus the remaining mass. */
export interface TopKTeacher {
  /** token ids [N, k] (int64) */
  readonly indices: Value
  /** log-probabilities of those tokens [N, k] */
  readonly logProbs: Value
  /** probability mass outside the top k [N] */
  readonly tailMass: Value
}

/**
 * Forward KL(teacher || student) per position, with the teacher given as top-k log-probs
 * plus tail mass: Σ_k p_k (log p_k - log q_k) + p_tail (log p_tail - log q_tail), where
 * q_tail = 1 - Σ_k q_k is the student's mass outside the teacher's top k.
 */
export const topKForwardKL = (g: Graph, head: LmHead, teacher: TopKTeacher, mask?: Value, opts: LossOptions = {}): MeanLoss => {
  const t = computeType(head.hidden)
  const m = floatMask(g, mask, teacher.tailMass, t)
  const sum = chunkedSum(g, {
    rows: [head.hidden, teacher.indices, toCompute(g, teacher.logProbs, t), toCompute(g, teacher.tailMass, t), m],
    shared: [head.weight],
    chunk: opts.chunk ?? DEFAULT_CHUNK,
    dtype: t,
    perRowShape: [],
    body: (sub, [h, idx, lp, tail, mk], [w]) => {
      const z = chunkLogits(sub, h, w, t, head.softcap)
      const lq = sub.gatherElements(logProbs(sub, z), idx, 1)
      const topTerm = sub.reduceSum(sub.mul(sub.exp(lp), sub.sub(lp, lq)), [1])
      // probabilities below this are treated as 0 in the tail term (float32 resolution)
      const tiny = sub.scalar(1e-12, t)
      const qTail = sub.max(sub.sub(sub.scalar(1, t), sub.reduceSum(sub.exp(lq), [1])), tiny)
      const tailTerm = sub.where(sub.greater(tail, tiny), sub.mul(tail, sub.sub(sub.log(sub.max(tail, tiny)), sub.log(qTail))), sub.scalar(0, t))
      return sub.mul(sub.add(topTerm, tailTerm), mk)
    },
  })
  return meanOf(g, sum, g.reduceSum(m))
}

/** A teacher over the full vocabulary: its own hidden states and head (e.g. the frozen base
 * model in the same graph), or precomputed logits [N, V]. */
export type FullTeacher = LmHead | { readonly logits: Value }

/** Forward KL(teacher || student) over the full vocabulary, averaged over masked positions. */
export const fullForwardKL = (g: Graph, student: LmHead, teacher: FullTeacher, mask?: Value, opts: LossOptions = {}): MeanLoss => {
  const t = computeType(student.hidden)
  const m = floatMask(g, mask, student.hidden, t)
  const teacherRows = "logits" in teacher ? [teacher.logits] : [teacher.hidden]
  const teacherShared = "logits" in teacher ? [] : [teacher.weight]
  const sum = chunkedSum(g, {
    rows: [student.hidden, m, ...teacherRows],
    shared: [student.weight, ...teacherShared],
    chunk: opts.chunk ?? DEFAULT_CHUNK,
    dtype: t,
    perRowShape: [],
    body: (sub, [h, mk, th], [w, tw]) => {
      const lq = logProbs(sub, chunkLogits(sub, h, w, t, student.softcap))
      const lp = logProbs(sub, tw ? chunkLogits(sub, th, tw, t, "weight" in teacher ? teacher.softcap : undefined) : toCompute(sub, th, t))
      return sub.mul(sub.reduceSum(sub.mul(sub.exp(lp), sub.sub(lp, lq)), [1]), mk)
    },
  })
  return meanOf(g, sum, g.reduceSum(m))
}

/**
 * Log-likelihood of each of `numSequences` sequences packed along the N positions:
 * ll[s] = Σ_{n: segment[n] = s} log q(target[n]). Positions with segment -1 are ignored.
 */
export const sequenceLogLikelihood = (g: Graph, head: LmHead, targets: Value, segments: Value, numSequences: number, opts: LossOptions = {}): Value => {
  const t = computeType(head.hidden)
  const ids = g.constant("int64", [1, numSequences], Array.from({ length: numSequences }, (_, i) => i))
  return chunkedSum(g, {
    rows: [head.hidden, targets, segments],
    shared: [head.weight],
    chunk: opts.chunk ?? DEFAULT_CHUNK,
    dtype: t,
    perRowShape: [numSequences],
    body: (sub, [h, tgt, seg], [w]) => {
      const z = chunkLogits(sub, h, w, t, head.softcap)
      const inSegment = sub.equal(sub.unsqueeze(seg, [1]), ids) // [C, S]
      const valid = sub.greaterOrEqual(seg, sub.constant("int64", [], [0]))
      const lq = sub.gatherElements(logProbs(sub, z), sub.unsqueeze(sub.where(valid, tgt, sub.zerosLike(tgt)), [1]), 1) // [C, 1]
      return sub.where(inSegment, lq, sub.scalar(0, t))
    },
  })
}

/** -Σ_s weight[s] · ll[s]: the weighted sequence negative log-likelihood. */
export const weightedSequenceNLL = (g: Graph, logLikelihoods: Value, weights: Value): Value =>
  g.neg(g.reduceSum(g.mul(logLikelihoods, weights.dtype === logLikelihoods.dtype ? weights : g.cast(weights, logLikelihoods.dtype))))
