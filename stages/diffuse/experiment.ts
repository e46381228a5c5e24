// The diffuse-distributions experiment (seed 001) as one wiring, used by pipelines/diffuse.ts:
//
//   train prompts ─► diffuse-train (LoRA) ─┐
//   train / test prompts ─► diffuse-sample (untuned) and diffuse-sample-lora (tuned)
//                         ─► diffuse-metrics per set ─► diffuse-report (report.md) and diffuse-histograms (SVGs)
//
// The model and the two prompt sets are named externals: `--set model.path=DIR`,
// `--set train_prompts.path=DIR`, `--set test_prompts.path=DIR` (directories of prompt files in the
// seed's format). Every node has a fixed name, so `--set diffuse-train.passes=30`,
// `--set sample_tuned_test.n=200`, ... address it.
import { external, type Node } from "../../src/engine/index.ts"
import { peftDirectory } from "../baking/experiment.ts"
import { diffuseMetrics } from "./metrics.ts"
import { diffusePrompts } from "./prompts.ts"
import { type DiffuseReport, diffuseHistograms, diffuseReport, histogramsDirectory } from "./report.ts"
import { diffuseSample, diffuseSampleLora } from "./sample.ts"
import { diffuseTrain } from "./train.ts"

type ParamsOf<S extends (params: any, ...rest: any[]) => unknown> = Parameters<S>[0]

export const defaults = {
  // the seed's: rank 4 on every attention and MLP projection, AdamW eps 1e-5, clipping 1.0; the
  // learning rate, schedule and passes are tuned for the tiny models
  train: {
    rank: 4,
    alpha: 8,
    targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    passes: 60,
    batchSize: 16,
    lr: 2e-2,
    warmupSteps: 0,
    schedule: "cosine",
    minLrRatio: 0.1,
    weightDecay: 0,
    eps: 1e-5,
    maxGradNorm: 1,
    earlyStop: false,
    gamma: 0.2,
    seed: 0,
    threads: 0,
    checkpointEvery: 30,
  },
  // the seed's sampling: 1000 generations per prompt at temperature 1, no truncation; an answer
  // longer than 8 tokens is no target of the shipped sets (the sample stage fails when one is longer)
  sample: { n: 1000, temperature: 1, topP: 1, topK: 0, maxNewTokens: 8, seed: 0, batchSize: 250, threads: 0, stepsPerRun: 1 },
} as const satisfies { readonly train: ParamsOf<typeof diffuseTrain>; readonly sample: Omit<ParamsOf<typeof diffuseSample>, "label"> }

export const diffuseExperiment = () => {
  const model = external.dir("models/tiny-chat", { name: "model" })
  const trainSet = diffusePrompts({}, { prompts: external.dir("datasets/diffuse/train", { name: "train_prompts" }) }, { name: "train_set" })
  const testSet = diffusePrompts({}, { prompts: external.dir("datasets/diffuse/test", { name: "test_prompts" }) }, { name: "test_set" })
  const adapter = diffuseTrain(defaults.train, { model, prompts: trainSet })
  const measure = (set: "train" | "test", prompts: typeof trainSet) =>
    diffuseMetrics(
      { set: set === "train" ? "train" : "held-out" },
      {
        prompts,
        untuned: diffuseSample({ ...defaults.sample, label: "untuned" }, { model, prompts }, { name: `sample_untuned_${set}` }),
        tuned: diffuseSampleLora({ ...defaults.sample, label: "tuned" }, { model, prompts, adapter }, { name: `sample_tuned_${set}` }),
      },
      { name: `metrics_${set}` },
    )
  const train = measure("train", trainSet)
  const heldout = measure("test", testSet)
  const report: Node<typeof DiffuseReport> = diffuseReport({}, { adapter, train, heldout })
  const histograms = diffuseHistograms({}, { train, heldout })
  return { adapter, report, histograms }
}

/** report.md (printed) and report.json, the histograms as histograms/*.svg, the adapter as a PEFT directory adapter/. */
export const publishDiffuse = (e: ReturnType<typeof diffuseExperiment>) =>
  ({
    publish: {
      "report.md": { from: e.report, as: (r: DiffuseReport) => r.markdown },
      "report.json": e.report,
      histograms: { from: e.histograms, write: histogramsDirectory },
      adapter: { from: e.adapter, write: peftDirectory },
    },
    print: ["report.md"],
  }) as const
