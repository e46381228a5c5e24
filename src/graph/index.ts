/**
 * The compute core: a typed ONNX graph builder, shape inference, serialization (opset
 * OPSET = 23), reverse-mode autodiff, chunked LM losses and an in-graph AdamW step.
 *
 * Build, serialize, run:
 * ```ts
 * const g = new Graph()
 * const x = g.input("x", "float32", ["batch", 4])             // symbolic dim "batch"
 * const w = g.initializer("w", "float32", [4, 2], { kind: "inline", data: new Float32Array(8) })
 * // weights left inside a .safetensors file (written as ONNX external data; the .onnx must be
 * // saved into a directory that contains the file's real path):
 * //   g.initializer("w", "float32", [4, 2], externalSource(modelDir, file, 8 + headerLen + begin, end - begin))
 * const y = g.softmax(g.matMul(x, w))                          // shape inferred: [batch, 2]
 * g.outputAs("y", y)
 * const session = yield* createSession(serialize(g))           // runtime/session.ts; or a .onnx path
 * const out = yield* runSession(session, { x: tensor("float32", [1, 4], [1, 2, 3, 4]) })
 * ```
 * Ops without a method: `g.node(opType, inputs, attrs, [{ dtype, shape }])`.
 * Control flow: `g.loop(trips, cond, initial, (sub, iter, carried) => ({ carried, scans }))`
 * and `g.if_(cond, thenFn, elseFn)` build bodies in subgraphs that may read outer values.
 *
 * Differentiate: `const [dw] = gradients(g, loss, [w])` appends the backward nodes to g.
 * Losses: `crossEntropy(g, { hidden, weight }, targets, mask, { chunk }).mean` and friends
 * (losses.ts) work chunk by chunk and never build [tokens x vocab].
 * Randomness: `dropout(g, x, p, seed)` and `hashBits` (random.ts) draw from a fed int64 seed, so
 * a run's masks are a function of its feeds, not of the session.
 * Train step: `buildTrainStep({ params, batch, loss, adamw, microBatches })` returns a graph
 * whose one run is one AdamW step (names in `trainStepNames`); runtime/train.ts drives it.
 */
export type { DType } from "./dtype.ts"
export { Graph, type OutputSpec } from "./builder.ts"
export { type Dim, type GraphIR, type Node, type Shape, type TensorSource, Value } from "./ir.ts"
export { ShapeError } from "./shape.ts"
export { IR_VERSION, OPSET, serialize } from "./serialize.ts"
export { ExternalDataError, externalSource } from "./external.ts"
export { constInts, differentiableOps, GradientError, gradients, unbroadcast } from "./autodiff.ts"
export { type ChunkedSumSpec, chunkedSum } from "./chunked.ts"
export { crossEntropy, type FullTeacher, fullForwardKL, type LmHead, type LossOptions, type MeanLoss, sequenceLogLikelihood, softcap, type TopKTeacher, topKForwardKL, weightedSequenceNLL } from "./losses.ts"
export { dropout, hashBits, PRIME } from "./random.ts"
export { type AdamWConfig, type BatchSpec, buildTrainStep, learningRate, type ParamSpec, type Schedule, type TrainStepSpec, trainStepNames } from "./optim.ts"
