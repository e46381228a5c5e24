// Compute-core benchmark: a fixed tiny transformer on the CPU provider. Measures, side by
// side in one process, the forward pass (loss only) and one train step (forward + backward
// + AdamW update, all in one session.run), their ratio (goal <= 3.5x), peak RSS, and the node
// counts onnxruntime reports after its optimizations (Transpose/Cast/Expand chains show here).
import { spawnSync } from "node:child_process"
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

/** Peak RSS of this process in MB: VmHWM belongs to the current address space, whereas
 * getrusage's maxrss on Linux carries the parent's peak across fork+exec. */
const peakRssMB = (): number => {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))
  return m ? Number(m[1]) / 1024 : process.resourceUsage().maxRSS / 1024
}

// ---- peak memory of a chunked cross-entropy forward+backward over a large vocabulary,
// run in child processes (peak RSS is per process): chunked vs one chunk holding all logits.
const ceN = 2048
const ceV = 32000
const ceH = 16
const ceMemoryProbe = (chunkSize: number) =>
  Effect.gen(function* () {
    const g = new Graph("ce")
    const h = g.input("h", "float32", [ceN, ceH])
    const w = g.input("w", "float32", [ceV, ceH])
    const t = g.input("t", "int64", [ceN])
    const loss = crossEntropy(g, { hidden: h, weight: w }, t, undefined, { chunk: chunkSize }).mean
    g.outputAs("loss", loss)
    const [dh, dw] = gradients(g, loss, [h, w])
    g.outputAs("dh", dh)
    g.outputAs("dw", dw)
    const s = yield* createSession(serialize(g))
    const r = rng(3)
    const before = peakRssMB()
    const t0 = performance.now()
    yield* runSession(s, {
      h: tensor("float32", [ceN, ceH], Float32Array.from({ length: ceN * ceH }, () => r())),
      w: tensor("float32", [ceV, ceH], Float32Array.from({ length: ceV * ceH }, () => r() * 0.1)),
      t: tensor("int64", [ceN], Array.from({ length: ceN }, (_, i) => (i * 7919) % ceV)),
    })
    const ms = performance.now() - t0
    console.log(JSON.stringify({ chunk: chunkSize, ms, peakRssMB: peakRssMB(), rssBeforeRunMB: before }))
  })

const runProbe = (chunkSize: number): { chunk: number; ms: number; peakRssMB: number; rssBeforeRunMB: number } => {
  const out = spawnSync(process.execPath, ["--import", "tsx", import.meta.filename, "--ce-memory", String(chunkSize)], { encoding: "utf8" })
  if (out.status !== 0) throw new Error(`chunked CE probe failed: ${out.stderr}`)
  return JSON.parse(out.stdout.trim().split("\n").pop() as string)
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
    peakRssMB: peakRssMB(),
    nodes: {
      forward: { built: countNodes(fwdIR), optimized: total(fwdOps), ops: pick(fwdOps) },
      trainStep: { built: countNodes(trainIR), optimized: total(trainOps), ops: pick(trainOps) },
    },
    trainOpsOptimized: trainOps,
    chunkedCrossEntropy: {
      tokens: ceN,
      vocab: ceV,
      hidden: ceH,
      fullLogitsMB: (ceN * ceV * 4) / 2 ** 20,
      chunked: runProbe(128),
      unchunked: runProbe(ceN),
    },
  }
  console.log(`tiny transformer (${result.model.params} params, batch ${B}x${T}) on CPU`)
  console.log(`  forward (loss)            ${fwdMs.toFixed(2)} ms median, ${fwdMin.toFixed(2)} ms min`)
  console.log(`  train step (fwd+bwd+adam) ${trainMs.toFixed(2)} ms median, ${trainMin.toFixed(2)} ms min`)
  console.log(`  forward+backward (grads)  ${gradMs.toFixed(2)} ms median (${result.forwardBackwardRatio.toFixed(2)}x forward)`)
  console.log(`  ratio                     ${result.ratio.toFixed(2)}x of medians, ${result.ratioOfMinima.toFixed(2)}x of minima (goal <= 3.5x)`)
  console.log(`  peak RSS                  ${result.peakRssMB.toFixed(0)} MB`)
  console.log(`  nodes forward ${result.nodes.forward.built} built -> ${result.nodes.forward.optimized} after ORT, train ${result.nodes.trainStep.built} -> ${result.nodes.trainStep.optimized}`)
  console.log(`  train-step ops after ORT: ${JSON.stringify(result.nodes.trainStep.ops)}`)
  const ce = result.chunkedCrossEntropy
  console.log(
    `  cross-entropy fwd+bwd ${ceN} tokens x ${ceV} vocab: chunk 128 peak RSS ${ce.chunked.peakRssMB.toFixed(0)} MB (${ce.chunked.ms.toFixed(0)} ms), one chunk ${ce.unchunked.peakRssMB.toFixed(0)} MB (${ce.unchunked.ms.toFixed(0)} ms); full logits = ${ce.fullLogitsMB.toFixed(0)} MB`,
  )
  writeFileSync(join(import.meta.dirname, "results", "graph.json"), JSON.stringify(result, null, 2))
})

const probeAt = process.argv.indexOf("--ce-memory")
Effect.runPromise(probeAt >= 0 ? ceMemoryProbe(Number(process.argv[probeAt + 1])) : main).catch((e) => {
  console.error(e instanceof Error ? e.message : String(e))
  process.exit(1)
})
