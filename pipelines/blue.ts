// The blue experiment (prompt baking, seed 000): bake the system prompt "Always mention the colour
// blue in your answers." into a LoRA on the un-prompted model, then compare base, prompted and
// baked. On the shipped models/tiny-chat it finishes in a few minutes on a 2-core CPU:
//   npx pipe run pipelines/blue.ts
// On a real local HF chat model (e.g. a Llama 3 Instruct directory), unchanged:
//   npx pipe run pipelines/blue.ts --set model.path=/models/Meta-Llama-3-8B-Instruct --gpus 0
// (and e.g. --set checker.regex=... is not needed: the checker is a word match on "blue").
//
//   questions (train / validation split of the training questions; held-out questions)
//     -> sample-trajectories (prompted model, n per question)        train and validation
//     -> teacher-logits (top-k + tail of the prompted model along the train trajectories)
//     -> lora-train (KL(prompted || base + LoRA) over response tokens; validation KL per epoch)
//     -> evaluate base / prompted / baked -> compare (published as compare.md and compare.json)
import { external, pipeline } from "../src/engine/index.ts"
import { compare } from "../stages/baking/compare.ts"
import { evaluate, evaluateBaked } from "../stages/baking/evaluate.ts"
import { loraTrain } from "../stages/baking/lora-train.ts"
import { questions } from "../stages/baking/questions.ts"
import { sampleTrajectories } from "../stages/baking/sample-trajectories.ts"
import { teacherLogits } from "../stages/baking/teacher-logits.ts"

const model = external.dir("models/tiny-chat", { name: "model" })
const trainQuestions = external.file("datasets/tiny-chat/train-squad.jsonl", { name: "train_file" })
const heldoutQuestions = external.file("datasets/tiny-chat/heldout-squad.jsonl", { name: "heldout_file" })

const systemPrompt = "Always mention the colour blue in your answers."

const split = { field: "question", answersField: "answers", idField: "id", validationFraction: 0.2, seed: 0 }
const trainSet = questions({ ...split, split: "train", n: 200 }, { file: trainQuestions }, { name: "train_questions" })
const validationSet = questions({ ...split, split: "validation", n: 40 }, { file: trainQuestions }, { name: "validation_questions" })
const heldout = questions({ ...split, split: "all", n: 100 }, { file: heldoutQuestions }, { name: "heldout_questions" })

const sampling = { systemPrompt, temperature: 1, topP: 1, topK: 0, minNewTokens: 0, maxNewTokens: 64, seed: 0, batchSize: 32, threads: 0 }
const train = sampleTrajectories({ ...sampling, n: 4 }, { model, questions: trainSet }, { name: "sample_train" })
const validation = sampleTrajectories({ ...sampling, n: 2, seed: 1 }, { model, questions: validationSet }, { name: "sample_validation" })

const teacher = teacherLogits({ mode: "stored", topK: 32, dtype: "float16", batchSize: 32, threads: 0 }, { model, trajectories: train })

const adapter = loraTrain(
  {
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
    validationBatchSize: 32,
    checkpointEvery: 20,
    threads: 0,
  },
  { model, trajectories: train, teacher, validation },
)

const evaluation = {
  checker: { behaviour: "blue" as const },
  samplesPerQuestion: 2,
  temperature: 1,
  topP: 1,
  topK: 0,
  maxNewTokens: 64,
  answerMaxNewTokens: 32,
  seed: 0,
  keepSamples: 16,
  batchSize: 32,
  threads: 0,
}
const evalInputs = { model, validation, heldout, facts: heldout }
const base = evaluate({ ...evaluation, variant: "base" }, evalInputs, { name: "evaluate_base" })
const prompted = evaluate({ ...evaluation, variant: "prompted" }, evalInputs, { name: "evaluate_prompted" })
const baked = evaluateBaked(evaluation, { ...evalInputs, adapter }, { name: "evaluate_baked" })
const comparison = compare({ samples: 8 }, { base, prompted, baked })

export default pipeline(
  "blue",
  { comparison },
  { publish: { "compare.json": comparison, "compare.md": { from: comparison, as: (c) => c.markdown } }, print: ["compare.md"] },
)
