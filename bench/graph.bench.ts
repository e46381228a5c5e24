// Compute-core benchmark: a fixed tiny transformer on the CPU provider. Measures, side by
// side in one process, the forward pass (loss only) and one train step (forward + backward
// + AdamW update, all in one session.run), their ratio (goal <= 3.5x), peak RSS, and the node
// counts onnxruntime reports after its optimizations (Transpose/Cast/Expand chains show here).
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import onnxProto from "onnx-proto"
import type * as ort from "onnxruntime-node"
import { Graph, type GraphIR, gradients, serialize, type Value } from "../src/graph/index.ts"
import { crossEntropy } from "../src/graph/losses.ts"
import { buildTrainStep } from "../src/graph/optim.ts"
import { createSession, runSession, type Session } from "../src/runtime/session.ts"
import { tensor } from "../src/runtime/tensor.ts"
import { initTrainState, trainStep } from "../src/runtime/train.ts"
import { rng } from "../tests/graph/run.ts"
import { initParams, paramShapes, type TinyConfig, tinyTransformerHidden } from "../tests/graph/transformer.ts"

const cfg: TinyConfig = { vocab: 512, dim: 128, heads: 4, layers: 4, ffn: 512 }
const B = 16
const T = 128
const chunk = 256
const warmup = 3
const reps = 30

const shapes = paramShapes(cfg)
const lossOf = (g: Graph, p: Readonly<Record<string, Value>>, b: Readonly<Record<string, Value>>) =>
  crossEntropy(g, { hidden: g.reshape(tinyTransformerHidden(g, cfg, p, b.ids), [-1, cfg.dim]), weight: p.lm_head }, b.targets, undefined, { chunk }).mean

const forwardGraph = (): GraphIR => {
  const g = new Graph("forward")
  const p: Record<string, Value> = {}
  for (const [k, shape] of Object.entries(shapes)) p[k] = g.input(k, "float32", shape)
  const b = { ids: g.input("ids", "int64", [B, T]), targets: g.input("targets", "int64", [B * T]) }
  g.outputAs("loss", lossOf(g, p, b))
  return g
}
/** loss and gradients, no update: separates the backward pass from the AdamW update */
const gradGraph = (): GraphIR => {
  const g = new Graph("gradients")
  const p: Record<string, Value> = {}
  for (const [k, shape] of Object.entries(shapes)) p[k] = g.input(k, "float32", shape)
  const loss = lossOf(g, p, { ids: g.input("ids", "int64", [B, T]), targets: g.input("targets", "int64", [B * T]) })
  g.outputAs("loss", loss)
  gradients(g, loss, Object.values(p)).forEach((d, i) => g.outputAs(`grad_${i}`, d))
  return g
}
const trainGraph = (): GraphIR =>
  buildTrainStep({
    params: Object.fromEntries(Object.entries(shapes).map(([k, shape]) => [k, { shape, decay: !k.endsWith("norm") }])),
    batch: { ids: { dtype: "int64", shape: [B, T] }, targets: { dtype: "int64", shape: [B * T] } },
    loss: lossOf,
    adamw: { weightDecay: 0.01, maxGradNorm: 1 },
  })

const countNodes = (g: GraphIR): number => g.nodes.reduce((n, node) => n + 1 + Object.values(node.attrs).reduce((s, a) => s + (a.kind === "graph" ? countNodes(a.v) : 0), 0), 0)

/** Op histogram of the model onnxruntime wrote after optimization (subgraphs included). */
const optimizedOps = (file: string): Record<string, number> => {
  const model = onnxProto.onnx.ModelProto.decode(readFileSync(file))
  const ops: Record<string, number> = {}
  const visit = (gp: onnxProto.onnx.IGraphProto | null | undefined) => {
    for (const n of gp?.node ?? []) {
      const key = n.domain ? `${n.domain}.${n.opType}` : (n.opType ?? "?")
      ops[key] = (ops[key] ?? 0) + 1
      for (const a of n.attribute ?? []) visit(a.g)
    }
  }
  visit(model.graph)
  return ops
}

const main = Effect.gen(function* () {
  const dir = mkdtempSync(join(tmpdir(), "pipe-bench-graph-"))
  const fwdIR = forwardGraph()
  const trainIR = trainGraph()
  const fwdSession: Session = yield* createSession(serialize(fwdIR), { optimizedModelPath: join(dir, "forward.opt.onnx") })
  const trainSession: Session = yield* createSession(serialize(trainIR), { optimizedModelPath: join(dir, "train.opt.onnx") })
  const gradSession: Session = yield* createSession(serialize(gradGraph()))

  const init = initParams(cfg, 1)
  const params: Record<string, ort.Tensor> = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, tensor("float32", s, init[k])]))
  const r = rng(2)
  const ids = Array.from({ length: B * T }, () => Math.floor(((r() + 1) / 2) * cfg.vocab) % cfg.vocab)
  const batch = { ids: tensor("int64", [B, T], ids), targets: tensor("int64", [B * T], [...ids.slice(1), 0]) }
  let state = initTrainState(params)

  const fwdTimes: number[] = []
  const trainTimes: number[] = []
  const gradTimes: number[] = []
  // alternate forward and train runs so both see the same machine state
  for (let i = 0; i < warmup + reps; i++) {
    let t0 = performance.now()
    yield* runSession(fwdSession, { ...params, ...batch })
    const tf = performance.now() - t0
    t0 = performance.now()
    state = (yield* trainStep(trainSession, state, batch, 1e-3)).state
    const tt = performance.now() - t0
    t0 = performance.now()
    yield* runSession(gradSession, { ...params, ...batch })
    const tg = performance.now() - t0
    if (i >= warmup) {
      fwdTimes.push(tf)
      trainTimes.push(tt)
      gradTimes.push(tg)
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  // The ratio uses the medians of interleaved runs; minima are reported too because other
  // processes on a shared 2-core machine inflate single runs.
  const fwdMs = median(fwdTimes)
  const trainMs = median(trainTimes)
  const gradMs = median(gradTimes)
  const fwdMin = Math.min(...fwdTimes)
  const trainMin = Math.min(...trainTimes)
  const fwdOps = optimizedOps(join(dir, "forward.opt.onnx"))
  const trainOps = optimizedOps(join(dir, "train.opt.onnx"))
  const pick = (ops: Record<string, number>) => Object.fromEntries(["Transpose", "Cast", "Expand", "Reshape", "MatMul", "Gemm", "Loop"].map((k) => [k, ops[k] ?? 0]))
  const total = (ops: Record<string, number>) => Object.values(ops).reduce((a, b) => a + b, 0)
  const result = {
    model: { ...cfg, batch: B, seq: T, lossChunk: chunk, params: Object.values(shapes).reduce((s, sh) => s + sh.reduce((a, b) => a * b, 1), 0) },
    device: "cpu",
    reps,
    forwardMs: fwdMs,
    trainStepMs: trainMs,
    forwardBackwardMs: gradMs,
    ratio: trainMs / fwdMs,
    forwardBackwardRatio: gradMs / fwdMs,
    forwardMinMs: fwdMin,
    trainStepMinMs: trainMin,
    ratioOfMinima: trainMin / fwdMin,
    goalRatio: 3.5,
    peakRssMB: process.resourceUsage().maxRSS / 1024,
    nodes: {
      forward: { built: countNodes(fwdIR), optimized: total(fwdOps), ops: pick(fwdOps) },
      trainStep: { built: countNodes(trainIR), optimized: total(trainOps), ops: pick(trainOps) },
    },
    trainOpsOptimized: trainOps,
  }
  console.log(`tiny transformer (${result.model.params} params, batch ${B}x${T}) on CPU`)
  console.log(`  forward (loss)            ${fwdMs.toFixed(2)} ms median, ${fwdMin.toFixed(2)} ms min`)
  console.log(`  train step (fwd+bwd+adam) ${trainMs.toFixed(2)} ms median, ${trainMin.toFixed(2)} ms min`)
  console.log(`  forward+backward (grads)  ${gradMs.toFixed(2)} ms median (${result.forwardBackwardRatio.toFixed(2)}x forward)`)
  console.log(`  ratio                     ${result.ratio.toFixed(2)}x of medians, ${result.ratioOfMinima.toFixed(2)}x of minima (goal <= 3.5x)`)
  console.log(`  peak RSS                  ${result.peakRssMB.toFixed(0)} MB`)
  console.log(`  nodes forward ${result.nodes.forward.built} built -> ${result.nodes.forward.optimized} after ORT, train ${result.nodes.trainStep.built} -> ${result.nodes.trainStep.optimized}`)
  console.log(`  train-step ops after ORT: ${JSON.stringify(result.nodes.trainStep.ops)}`)
  writeFileSync(join(import.meta.dirname, "results", "graph.json"), JSON.stringify(result, null, 2))
})

Effect.runPromise(main).catch((e) => {
  console.error(e instanceof Error ? e.message : String(e))
  process.exit(1)
})
