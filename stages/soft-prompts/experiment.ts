// The soft-prompt experiment as one wiring (pipelines/soft-prompts.ts) on the tiny family, with
// defaults sized for a 2-core CPU:
//
//   the plain corpus (datasets/tiny-world/train.jsonl)
//     -> text-examples (next token and skip 1 with tiny-base-s; next token with tiny-chat-s's tokenizer for detuning)
//   repetition-examples, pathfinding-examples
//     -> soft-prompt-train (k swept) -> soft-prompt-evaluate -> soft-prompt-report (gathered over k)
//
// Which model runs what: own distribution, skip 1 and repetition on tiny-base-s, the base model
// trained on exactly that plain corpus (so "own distribution" has no distribution gap at all, the
// seed's flat-row premise; the chat model saw the corpus only as a 10% share of its SFT); detuning
// on the pair: tiny-chat-s with a soft prompt on the plain corpus, against tiny-base-s's own loss
// there; pathfinding on tiny-navigator-s, tiny-base-s tuned on unlabelled paths of both qualities
// (navigator.ts, pipelines/tiny-navigator.ts), so that the conditional prompt picks a quality of a
// skill the model has rather than teach the skill. The -s size keeps the sweep (~21 trainings)
// within minutes of CPU; its 128 positions bound k + sample length (64 + 64).
//
// Every node has a fixed name: `--set train_repetition.steps=400`, `--set 'train_own.k=sweep([0, 8])'`.
// Models and the corpus are named externals (`--set model.path=DIR`, `chat.path`, `base.path`,
// `navigator.path`, `corpus.path=FILE`: JSON Lines with {"text"} or {"prompt", "completion"} lines).
import { Effect, Result } from "effect"
import { external, gather, type Node, type PublishWriter, sweep } from "../../src/engine/index.ts"
import { readHeader, readTensor } from "../../src/core/safetensors.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { baseModelName, writePromptTuning } from "../../src/models/peft.ts"
import { pathfindingExamples, repetitionExamples, textExamples } from "./data.ts"
import { softPromptEvaluate } from "./evaluate.ts"
import type { Examples } from "./examples.ts"
import { softPromptReport } from "./report.ts"
import { readSoftPrompt } from "./soft-prompt.ts"
import { softPromptTrain } from "./train.ts"

type ParamsOf<S extends (params: any, ...rest: any[]) => unknown> = Parameters<S>[0]

/** The grids of the pathfinding objective, and of the navigator's training corpus (navigator.ts). */
export const grids = { size: 5, wallDensity: 0.25, minOptimal: 3, maxMoves: 14, detourFraction: 0.5, greed: 0.6 } as const

export const defaults = {
  ks: [0, 1, 4, 16, 64],
  // 128 test documents (~7,000 scored tokens): the loss of a k is compared with k = 0's on the same documents
  split: { train: 1024, validation: 64, test: 128, seed: 0 },
  /** the corpus's documents are up to 95 tokens, cut to 64: room for k = 64 within the family's 128 positions */
  length: 64,
  // The seed's "meowster jones" is common sub-words in Pythia's 50k vocabulary, but 8 fragments the
  // family's 1536-token tokenizer never outputs in its corpus (tiny-base-s: ~15 nats each, still on
  // the 4th repeat; a soft prompt gets them to 6.4 and stalls there at every k). The family's own
  // words in an order no document has are what "unnatural but producible" means for this vocabulary.
  repetition: { text: "painter Binwick soup green", length: 32, train: 64, validation: 16, test: 32, seed: 0 },
  pathfinding: { ...grids, train: 4096, validation: 64, test: 256, seed: 0 },
  // Detuning scores the texts without bos, so the prompt sits right before the text as the seed's
  // does (it inserts its prompt at a random position inside each sample, never with a bos between
  // it and the text that follows). In front of a bos it can do little: a model pretrained on
  // packed rows learns that nothing before a bos bears on what follows, and the chat tune leaves
  // that reset intact. tiny-chat-s against tiny-base-s: with bos, +14.9% at k = 0 and +13.4% with
  // the best prompt; without, +18.7% at k = 0 and +0.5% at k = 16
  detuningBos: false,
  train: {
    init: "zero",
    hidden: 128,
    // sized for a shared 2-core CPU; the seed ran 1024 steps x 32 lanes (2048 x 256 for
    // pathfinding) on a GPU. Zero vectors are dead positions under RMSNorm (key and value 0 in every
    // layer), and a model pretrained one document per row, bos always first, was thrown by them
    // (the first family: k = 64 ended +14.6% above k = 0 on its own corpus). The family is now
    // pretrained on packed rows, text before a bos is nothing new to it, and 240 steps end within
    // 0.3% of k = 0 at every k
    steps: 240,
    lanes: 8,
    // the seed's AdamW lr 1e-3 is for thousands of steps; on the previous family 1e-2 and 3e-2 ended
    // within 1% of each other after 240 steps (k = 64, own corpus), 1e-2 lower
    lr: 1e-2,
    warmupSteps: 10,
    schedule: "cosine",
    weightDecay: 1e-4,
    maxGradNorm: 1,
    validateEvery: 40,
    patience: 0,
    seed: 0,
    validationBatchSize: 32,
    threads: 0,
    checkpointEvery: 40,
  },
  /** what an objective changes in `train`. Repetition drives a loss of ~12 nats towards 0 (k = 16
   *  on tiny-base-s: 1.46 after 240 steps at 1e-2, still falling; 1.04 after 600; 0.82 after 240 at
   *  3e-2; 0.52 after 480 at 3e-2). Pathfinding's condition is worth little loss (a path's quality
   *  shows in a few of its moves and its length) and the navigator, pretrained on packed rows, reads
   *  little of what comes before its bos: after 480 steps x 8 lanes at 1e-2 the prompt had changed
   *  nothing (k = 16: test loss 0.7272 against 0.7276 at k = 0, sampled paths the same under both
   *  conditions); 2000 x 16 at 3e-2 gives 0.7178 and paths that differ by condition */
  objectiveTrain: { pathfinding: { steps: 2000, lanes: 16, lr: 3e-2 }, repetition: { steps: 480, lr: 3e-2 } },
  evaluate: { conditions: [1, 0.5], decodings: [{ temperature: 0, samples: 1 }, { temperature: 1, samples: 4 }], maxNewTokens: 20, batchSize: 32, threads: 0 },
} as const satisfies {
  readonly train: Omit<ParamsOf<typeof softPromptTrain>, "k">
  readonly evaluate: Omit<ParamsOf<typeof softPromptEvaluate>, "model">
  readonly [other: string]: unknown
}

/** Train over k and evaluate: the nodes are named `train_<name>` and `evaluate_<name>`. */
const curve = (name: string, label: string, model: ReturnType<typeof external.dir>, data: Node<typeof Examples>, train: { readonly steps?: number; readonly lanes?: number; readonly lr?: number } = {}) => {
  const prompt = softPromptTrain({ ...defaults.train, ...train, k: sweep([...defaults.ks]) }, { model, data }, { name: `train_${name}` })
  const evaluation = softPromptEvaluate({ ...defaults.evaluate, model: label }, { model, data, prompt }, { name: `evaluate_${name}` })
  return { prompt, evaluation }
}

export const softPromptExperiment = () => {
  const model = external.dir("models/tiny-base-s", { name: "model" })
  // detuning: a chat model and the base model it was tuned from
  const chat = external.dir("models/tiny-chat-s", { name: "chat" })
  const base = external.dir("models/tiny-base-s", { name: "base" })
  // pathfinding: a model that can find paths (navigator.ts)
  const navigator = external.dir("models/tiny-navigator-s", { name: "navigator" })
  // the base's pretraining corpus: its own distribution, and the base-domain text of detuning
  const corpus = external.file("datasets/tiny-world/train.jsonl", { name: "corpus" })
  const d = defaults

  const ownExamples = textExamples({ ...d.split, skip: 0, bos: true, length: d.length }, { model, texts: corpus }, { name: "own_examples" })
  const skipExamples = textExamples({ ...d.split, skip: 1, bos: true, length: d.length }, { model, texts: corpus }, { name: "skip_examples" })
  const detuneExamples = textExamples({ ...d.split, skip: 0, bos: d.detuningBos, length: d.length }, { model: chat, texts: corpus }, { name: "detuning_examples" })
  const repeatExamples = repetitionExamples(d.repetition, { model }, { name: "repetition_examples" })
  const pathExamples = pathfindingExamples(d.pathfinding, { model: navigator }, { name: "pathfinding_examples" })

  const autoregressive = curve("own", "model", model, ownExamples)
  const skip = curve("skip", "model", model, skipExamples)
  const repetition = curve("repetition", "model", model, repeatExamples, d.objectiveTrain.repetition)
  const detuning = curve("detuning", "chat", chat, detuneExamples)
  const pathfinding = curve("pathfinding", "navigator", navigator, pathExamples, d.objectiveTrain.pathfinding)
  const baseK0 = softPromptTrain({ ...d.train, k: 0 }, { model: base, data: detuneExamples }, { name: "train_detuning_base" })
  const detuningBase = softPromptEvaluate({ ...d.evaluate, model: "base" }, { model: base, data: detuneExamples, prompt: baseK0 }, { name: "evaluate_detuning_base" })

  const report = softPromptReport(
    { title: "Soft prompts for evaluation: test loss against k" },
    {
      autoregressive: gather(autoregressive.evaluation),
      skip: gather(skip.evaluation),
      repetition: gather(repetition.evaluation),
      detuning: gather(detuning.evaluation),
      detuningBase,
      pathfinding: gather(pathfinding.evaluation),
    },
  )
  return { report, prompts: { own: autoregressive.prompt, skip: skip.prompt, repetition: repetition.prompt, detuning: detuning.prompt } }
}

/**
 * A trained plain soft prompt as a PEFT prompt-tuning directory (base_model_name_or_path: the model
 * it was trained on). k = 0 has no prompt and writes nothing.
 */
export const promptTuningDirectory: PublishWriter = ({ payload, externals }, target) => {
  const r = Effect.runSync(
    Effect.result(
      Effect.gen(function* () {
        const header = yield* readHeader(payload)
        const prompt = yield* readSoftPrompt({ path: payload, metadata: header.metadata, read: (n) => Effect.runSync(readTensor(header, n)) })
        if (prompt.kind !== "plain") return
        const dir = Object.values(externals)[0]
        const ckpt = yield* loadCheckpoint(dir)
        yield* writePromptTuning(target, { k: prompt.k, values: prompt.values, hiddenSize: ckpt.config.hiddenSize, baseModelNameOrPath: baseModelName(dir) }, ckpt.config)
      }),
    ),
  )
  // a publish writer reports by throwing: the typed error itself, so its message reaches the run's summary
  if (Result.isFailure(r)) throw r.failure
}

export const publishSoftPrompts = (experiment: ReturnType<typeof softPromptExperiment>) =>
  ({
    publish: {
      "soft-prompts.md": { from: experiment.report, as: (r: { markdown: string }) => r.markdown },
      "soft-prompts.svg": { from: experiment.report, as: (r: { svg: string }) => r.svg },
      "soft-prompts.json": { from: experiment.report, as: ({ markdown: _, svg: __, ...rest }: { markdown: string; svg: string }) => rest },
      "prompt-own": { from: experiment.prompts.own, write: promptTuningDirectory },
      "prompt-skip": { from: experiment.prompts.skip, write: promptTuningDirectory },
      "prompt-repetition": { from: experiment.prompts.repetition, write: promptTuningDirectory },
      "prompt-detuning": { from: experiment.prompts.detuning, write: promptTuningDirectory },
    },
    print: ["soft-prompts.md"],
  }) as const
