// The prompt-baking pipeline (pipelines/blue.ts, default settings, shipped tiny model, CPU) from a
// cold cache, then again fully cached. Reports, from the stages' own metrics of that one run:
//   sampling tokens/s     sample-trajectories (KV-cache generation, in-graph sampling)
//   teacher tokens/s      teacher-logits (chunked top-k scoring of the response tokens)
//   training tokens/s     lora-train steps (response tokens trained per second of step time), median
//   teacher bytes/token   what the TeacherLogits artifact stores per response token, against the
//                         4 x vocabulary bytes of full fp32 logits (the ratio is the saving)
// and the whole pipeline's wall time (goal, issue 6: under 10 minutes on a 2-core CPU) with the
// compare figures it produced (KL reduction, behaviour gap). Side by side in the same run, the
// same pipeline with `teacher-logits.mode=recompute` (the prompted model runs inside the training
// graph instead of being read from the stored top-k): its training tokens/s and KL reduction; and
// with `lora-train.dropout=0.05` (masks hashed in the graph, src/graph/random.ts): the same two.
import { Effect } from "effect"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { runPipeline, silentReporter, Store } from "../src/engine/index.ts"
import { loadCheckpoint } from "../src/models/checkpoint.ts"
import type { BakeComparison } from "../stages/baking/artifacts.ts"

const repo = resolve(import.meta.dirname, "..")
const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const dir = mkdtempSync(join(tmpdir(), "pipe-bench-baking-"))
try {
  const store = new Store(join(dir, "cache"))
  const run = async (overrides: ReadonlyArray<string> = []) => {
    const started = performance.now()
    const summary = await Effect.runPromise(runPipeline({ store, pipelineFile: join(repo, "pipelines/blue.ts"), overrides, runsDir: join(dir, "runs"), reporter: silentReporter }))
    if (summary.status !== "succeeded") throw new Error(`blue pipeline ${summary.status}: ${JSON.stringify(summary.nodes.filter((n) => n.status !== "succeeded"))}`)
    return { summary, seconds: (performance.now() - started) / 1000 }
  }
  const cold = await run()
  const cached = await run()
  const recompute = await run(["teacher-logits.mode=recompute"])
  const dropout = await run(["lora-train.dropout=0.05"])
  store.close()

  const metricsOf = (runDir: string) =>
    readFileSync(join(runDir, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { node: string; name: string; value: number })
  const metrics = metricsOf(cold.summary.runDir)
  const values = (node: string, name: string, from = metrics) => from.filter((m) => m.node === node && m.name === name).map((m) => m.value)
  const one = (node: string, name: string) => {
    const v = values(node, name)
    if (v.length !== 1) throw new Error(`metric ${node}/${name}: expected one value, got ${v.length}`)
    return v[0]
  }
  const vocab = Effect.runSync(loadCheckpoint(join(repo, "models/tiny-chat"))).config.vocabSize
  const storedBytes = one("teacher-logits", "teacher_bytes_per_token")
  const comparisonOf = (runDir: string) => JSON.parse(readFileSync(join(runDir, "compare.json"), "utf8")) as BakeComparison
  const comparison = comparisonOf(cold.summary.runDir)
  const trainingOf = (runDir: string) => median(values("lora-train", "tokens_per_s", metricsOf(runDir)))
  const training = trainingOf(cold.summary.runDir)
  const recomputeTraining = trainingOf(recompute.summary.runDir)
  const dropoutTraining = trainingOf(dropout.summary.runDir)
  const result = {
    machine: { cpus: cpus().length, model: cpus()[0]?.model },
    pipeline: "pipelines/blue.ts (defaults, models/tiny-chat, CPU)",
    wall_seconds: { cold: cold.seconds, fully_cached: cached.seconds },
    sampling_tokens_per_s: { train: one("sample_train", "sampling_tokens_per_s"), validation: one("sample_validation", "sampling_tokens_per_s") },
    teacher_tokens_per_s: one("teacher-logits", "teacher_tokens_per_s"),
    training_tokens_per_s_median: training,
    teacher_bytes_per_token: { stored: storedBytes, full_fp32_logits: 4 * vocab, saving: (4 * vocab) / storedBytes },
    compare: { kl_reduction: comparison.klReduction, behaviour_gap_points: comparison.behaviourGap, rows: comparison.rows },
    recompute_teacher: {
      training_tokens_per_s_median: recomputeTraining,
      stored_over_recompute_speed: training / recomputeTraining,
      kl_reduction: comparisonOf(recompute.summary.runDir).klReduction,
      wall_seconds_of_rerun: recompute.seconds,
    },
    dropout_0_05: {
      training_tokens_per_s_median: dropoutTraining,
      no_dropout_over_dropout_speed: training / dropoutTraining,
      kl_reduction: comparisonOf(dropout.summary.runDir).klReduction,
    },
  }
  console.log(`blue pipeline: ${cold.seconds.toFixed(1)} s cold, ${cached.seconds.toFixed(2)} s fully cached`)
  console.log(`sampling ${result.sampling_tokens_per_s.train.toFixed(0)} tok/s; teacher logits ${result.teacher_tokens_per_s.toFixed(0)} tok/s; training ${result.training_tokens_per_s_median.toFixed(0)} tok/s (median step)`)
  console.log(`teacher logits: ${storedBytes.toFixed(0)} bytes/token stored vs ${4 * vocab} for full fp32 logits (${result.teacher_bytes_per_token.saving.toFixed(1)}x smaller)`)
  console.log(`KL reduced ${comparison.klReduction.toFixed(1)}x; baked behaviour ${comparison.behaviourGap.toFixed(1)} points below prompted`)
  console.log(`recomputed teacher: training ${recomputeTraining.toFixed(0)} tok/s (stored/recompute ${result.recompute_teacher.stored_over_recompute_speed.toFixed(2)}x), KL reduced ${result.recompute_teacher.kl_reduction.toFixed(1)}x`)
  console.log(`dropout 0.05: training ${dropoutTraining.toFixed(0)} tok/s (no dropout / dropout ${result.dropout_0_05.no_dropout_over_dropout_speed.toFixed(2)}x), KL reduced ${result.dropout_0_05.kl_reduction.toFixed(1)}x`)
  mkdirSync(join(import.meta.dirname, "results"), { recursive: true })
  writeFileSync(join(import.meta.dirname, "results", "baking.json"), `${JSON.stringify(result, null, 2)}\n`)
} finally {
  rmSync(dir, { recursive: true, force: true })
}
