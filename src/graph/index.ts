/**
 * The compute core: a typed ONNX graph builder, shape inference, serialization,
 * reverse-mode autodiff, losses and an in-graph AdamW step.
 *
 * ```ts
 * import { Graph, serialize } from "../graph/index.ts"
 * import { createSession, runSession } from "../runtime/session.ts"
 * import { tensor } from "../runtime/tensor.ts"
 *
 * const g = new Graph()
 * const x = g.input("x", "float32", ["batch", 4])           // symbolic dim "batch"
 * const w = g.initializer("w", "float32", [4, 2], { kind: "inline", data: new Float32Array(8) })
 * //   or weights left in a safetensors file: externalSource(modelDir, file, offset, length)
 * const y = g.softmax(g.matMul(x, w))                        // shapes inferred: [batch, 2]
 * g.outputAs("y", y)
 * const bytes = serialize(g)                                 // ONNX opset OPSET, loads in onnxruntime-node
 * const out = yield* runSession(yield* createSession(bytes), { x: tensor("float32", [1, 4], [1, 2, 3, 4]) })
 * ```
 * Ops without a method: `g.node(opType, inputs, attrs, [{ dtype, shape }])`.
 * Control flow: `g.loop(...)` and `g.if_(...)` build their bodies in subgraphs.
 */
export type { DType } from "./dtype.ts"
export { Graph, type OutputSpec } from "./builder.ts"
export { type Dim, type GraphIR, type Node, type Shape, type TensorSource, Value } from "./ir.ts"
export { ShapeError } from "./shape.ts"
export { IR_VERSION, OPSET, serialize } from "./serialize.ts"
export { ExternalDataError, externalSource } from "./external.ts"
export { constInts, differentiableOps, GradientError, gradients, unbroadcast } from "./autodiff.ts"
export { type ChunkedSumSpec, chunkedSum } from "./chunked.ts"
export { crossEntropy, type FullTeacher, fullForwardKL, type LmHead, type LossOptions, type MeanLoss, sequenceLogLikelihood, type TopKTeacher, topKForwardKL, weightedSequenceNLL } from "./losses.ts"
export { type AdamWConfig, type BatchSpec, buildTrainStep, learningRate, type ParamSpec, type Schedule, type TrainStepSpec, trainStepNames } from "./optim.ts"
