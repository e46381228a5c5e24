// The prompt-baking experiment as one wiring, shared by pipelines/blue.ts and
// pipelines/bake-sweep.ts, with the defaults tuned for the shipped models/tiny-chat on a 2-core CPU:
//
//   questions (train / validation split of the training questions; held-out questions)
//     -> sample-trajectories under x0 (train and validation sets)
//     -> teacher-logits (the prompted model's top-k + tail along the train trajectories)
//     -> lora-train (KL(prompted || base + LoRA) over response tokens; validation KL per epoch)
//     -> evaluate the variants base / prompted / baked (KL to the prompted model) -> compare
//     -> bake-plots (KL per epoch and behaviour rates as SVG)
//
// Every node has a fixed name, so `--set lora-train.rank=4`, `--set sample_train.n=8`, ... address
// the same node in both pipelines. Any param may be a sweep; the trajectories and teacher logits
// depend on x0 and the sampling settings only, so a sweep over training settings shares them.
import { Effect, Result } from "effect"
import { external, gather, type Node, type PublishWriter } from "../../src/engine/index.ts"
import { exportAdapter } from "../../src/models/peft.ts"
import type { BakeComparison, BakedAdapter, Variant } from "./artifacts.ts"
import { compareVariants } from "./compare.ts"
import { evaluate, evaluateLora } from "./evaluate.ts"
import { loraTrain } from "./lora-train.ts"
import { bakePlots, type BakePlots } from "./plots.ts"
import { questions } from "./questions.ts"
import { sweepTable } from "../table.ts"
import { sampleTrajectories } from "./sample-trajectories.ts"
import { teacherLogits } from "./teacher-logits.ts"

type ParamsOf<S extends (params: any, ...rest: any[]) => unknown> = Parameters<S>[0]

export const defaults = {
  split: { field: "question", answersField: "answers", idField: "id", validationFraction: 0.2, seed: 0 },
  trainQuestions: 200,
  validationQuestions: 40,
  heldoutQuestions: 100,
  // temperature 1, no truncation: the trajectories follow the prompted model's own distribution
  // stepsPerRun 1 is fastest on the CPU; on CUDA set 8-16 (--set sample_train.stepsPerRun=16)
  sampling: { temperature: 1, topP: 1, topK: 0, minNewTokens: 0, maxNewTokens: 64, seed: 0, batchSize: 32, threads: 0, stepsPerRun: 1 },
  trainSamples: 4,
  validationSamples: 2,
  teacher: { mode: "stored", topK: 32, dtype: "float16", batchSize: 32, threads: 0 },
  lora: {
    rank: 8,
    alpha: 16,
    dropout: 0,
    targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    useRslora: false,
    epochs: 3,
    batchSize: 16,
    gradAccum: 1,
    lr: 1e-2,
    warmupSteps: 5,
    schedule: "cosine",
    minLrRatio: 0.1,
    weightDecay: 0,
    maxGradNorm: 1,
    seed: 0,
    earlyStopPatience: 0,
    divergenceFactor: 2,
    validationBatchSize: 32,
    checkpointEvery: 20,
    threads: 0,
  },
  evaluation: { samplesPerQuestion: 2, temperature: 1, topP: 1, topK: 0, maxNewTokens: 64, answerMaxNewTokens: 32, seed: 0, keepSamples: 16, batchSize: 32, threads: 0, stepsPerRun: 1 },
} as const satisfies {
  readonly teacher: ParamsOf<typeof teacherLogits>
  readonly lora: ParamsOf<typeof loraTrain>
  readonly [other: string]: unknown
}

/** The experiment's variants: the model as is, with x0 as its system prompt, and with the trained LoRA. */
export const variants = {
  base: { name: "base", interventions: [] },
  prompted: { name: "prompted", interventions: [{ _tag: "SystemPrompt" }] },
  baked: { name: "baked", interventions: [{ _tag: "Lora" }] },
} as const satisfies Record<string, Variant>

export interface BakeOptions {
  /** x0 (promptFile() reads one from a file), or a sweep over several */
  readonly systemPrompt: ParamsOf<typeof sampleTrajectories>["systemPrompt"]
  /** recognises x0's behaviour in a sample; sweep it together with systemPrompt (zip) */
  readonly checker: ParamsOf<typeof evaluate>["checker"]
  /** overrides of defaults.lora (values or sweeps) */
  readonly lora?: Partial<ParamsOf<typeof loraTrain>>
}

/** The experiment's nodes, ending in the comparison. The model and question files are named
 *  externals: `--set model.path=DIR`, `--set train_file.path=...`, `--set heldout_file.path=...`. */
export const bakeExperiment = (
  o: BakeOptions,
): { readonly comparison: Node<typeof BakeComparison>; readonly adapter: Node<typeof BakedAdapter>; readonly plots: Node<typeof BakePlots> } => {
  const model = external.dir("models/tiny-chat", { name: "model" })
  const trainFile = external.file("datasets/tiny-chat/train-squad.jsonl", { name: "train_file" })
  const heldoutFile = external.file("datasets/tiny-chat/heldout-squad.jsonl", { name: "heldout_file" })
  const d = defaults

  const trainSet = questions({ ...d.split, split: "train", n: d.trainQuestions }, { file: trainFile }, { name: "train_questions" })
  const validationSet = questions({ ...d.split, split: "validation", n: d.validationQuestions }, { file: trainFile }, { name: "validation_questions" })
  const heldout = questions({ ...d.split, split: "all", n: d.heldoutQuestions }, { file: heldoutFile }, { name: "heldout_questions" })

  const sampling = { ...d.sampling, systemPrompt: o.systemPrompt }
  const train = sampleTrajectories({ ...sampling, n: d.trainSamples }, { model, questions: trainSet }, { name: "sample_train" })
  const validation = sampleTrajectories({ ...sampling, n: d.validationSamples, seed: 1 }, { model, questions: validationSet }, { name: "sample_validation" })
  const teacher = teacherLogits(d.teacher, { model, trajectories: train })
  const adapter = loraTrain({ ...d.lora, ...o.lora }, { model, trajectories: train, teacher, validation })

  const evaluation = { ...d.evaluation, checker: o.checker, reference: variants.prompted }
  const evalInputs = { model, validation, heldout, facts: heldout }
  const base = evaluate({ ...evaluation, variant: variants.base }, evalInputs, { name: "evaluate_base" })
  const prompted = evaluate({ ...evaluation, variant: variants.prompted }, evalInputs, { name: "evaluate_prompted" })
  const baked = evaluateLora({ ...evaluation, variant: variants.baked }, { ...evalInputs, adapter }, { name: "evaluate_baked" })
  const comparison = compareVariants({ base, prompted, baked }, { reference: "prompted", pair: { from: "base", to: "baked" }, samples: 8 })
  const plots = bakePlots({}, { comparison, adapter })
  return { comparison, adapter, plots }
}

/**
 * One table over every point of a swept experiment: its sweep coordinates, then the baked model's
 * KL to the prompted one, behaviour rate and factual accuracy (with the KL reduction from base).
 */
export const bakeSweepTable = (comparison: Node<typeof BakeComparison>) =>
  sweepTable(
    {
      title: "Prompt baking sweep: the baked model (no system prompt) at each point",
      columns: [
        { name: "KL(prompted ‖ baked)", path: "rows[variant=baked].kl", digits: 4 },
        { name: "KL reduction", path: "klReduction", digits: 1 },
        { name: "behaviour rate", path: "rows[variant=baked].behaviour.rate", percent: true },
        { name: "accuracy", path: "rows[variant=baked].accuracy.rate", percent: true },
      ],
    },
    { points: gather(comparison) },
  )

/** A trained adapter as a PEFT directory, with base_model_name_or_path naming the model it was trained on. */
export const peftDirectory: PublishWriter = ({ payload, externals }, target) => {
  // a publish writer reports by throwing: the typed error itself, so its message reaches the run's summary
  const r = Effect.runSync(Effect.result(exportAdapter(payload, target, externals)))
  if (Result.isFailure(r)) throw r.failure
}

/** The plots as SVG files: kl-per-epoch.svg and behaviour.svg (one per instance of a sweep). */
export const publishBakePlots = (experiment: ReturnType<typeof bakeExperiment>) =>
  ({
    "kl-per-epoch.svg": { from: experiment.plots, as: (p: BakePlots) => p.klPerEpoch },
    "behaviour.svg": { from: experiment.plots, as: (p: BakePlots) => p.behaviour },
  }) as const

/**
 * Pipeline options that write compare.json and compare.md into the run folder and print the table,
 * the plots (publishBakePlots), and the trained adapter as a PEFT directory `adapter/` (one per
 * instance of a sweep).
 */
export const publishBake = (experiment: ReturnType<typeof bakeExperiment>) =>
  ({
    publish: {
      "compare.json": experiment.comparison,
      "compare.md": { from: experiment.comparison, as: (c: BakeComparison) => c.markdown },
      ...publishBakePlots(experiment),
      adapter: { from: experiment.adapter, write: peftDirectory },
    },
    print: ["compare.md"],
  }) as const
