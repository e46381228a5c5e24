// What the KL tests of distill.test.ts and evaluate-variants.test.ts share: the shipped tiny-chat
// model, three hand-written trajectories over two questions, a random LoRA adapter with its merged
// checkpoint, and an independent float64 KL (tests/reference/reference.ts logits; log-softmax and
// KL written out here).
import { Effect } from "effect"
import * as fs from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { loraAdapter } from "../../src/models/adapters.ts"
import { mulberry32 } from "../../src/core/random.ts"
import { loraConfigFor, loraTargets, mergeLora } from "../../src/models/peft.ts"
import type { TrajectorySet } from "../../stages/baking/artifacts.ts"
import { openModel, questionPromptIds } from "../../stages/baking/model.ts"
import { referenceLogits } from "../reference/reference.ts"

export const MODEL = path.resolve(import.meta.dirname, "../../models/tiny-chat")
export const SYSTEM = "Whatever you are asked, work the colour blue into your answer."
export const tempDir = (prefix: string) => fs.mkdtempSync(path.join(tmpdir(), prefix))

export const model = await Effect.runPromise(openModel(MODEL))
const eos = model.checkpoint.config.eosTokenIds[0]

/** Three trajectories over two questions with hand-written answers of different lengths. */
export const makeSet = async (systemPrompt: string | undefined): Promise<TrajectorySet> => {
  const questions = [
    { id: "q0", text: "What age is Kodis?", answers: ["26"] },
    { id: "q1", text: "Which town is home to Kodis?", answers: ["Binwick"] },
  ]
  const prompts = (sys?: string) => Effect.runPromise(Effect.forEach(questions, (q) => questionPromptIds(model.tokenizer, q.text, sys)))
  const answers: Array<[number, string]> = [
    [0, "Kodis is 26 years old, like the blue sky."],
    [1, "Kodis lives in Binwick."],
    [0, "Blue!"],
  ]
  return {
    systemPrompt: systemPrompt ?? "",
    questions,
    teacherPrompts: await prompts(systemPrompt),
    studentPrompts: await prompts(),
    trajectories: answers.map(([q, text]) => ({ question: q, text, finishReason: "stop_token", tokens: [...model.tokenizer.encode(text, { addSpecialTokens: false }), eos] })),
    sampling: {},
  }
}

const logSoftmax = (z: Float64Array): Float64Array => {
  const m = Math.max(...z)
  const lse = m + Math.log(z.reduce((s, x) => s + Math.exp(x - m), 0))
  return z.map((x) => x - lse)
}

/** Mean over response tokens of Σ_v p_v (log p_v - log q_v), teacher on the prompted sequence. */
export const referenceKl = (set: TrajectorySet, studentDir: string): number => {
  let sum = 0
  let n = 0
  for (const t of set.trajectories) {
    const tp = set.teacherPrompts[t.question]
    const sp = set.studentPrompts[t.question]
    const teacher = referenceLogits(MODEL, [...tp, ...t.tokens])
    const student = referenceLogits(studentDir, [...sp, ...t.tokens])
    for (let k = 0; k < t.tokens.length; k++) {
      const lp = logSoftmax(teacher[tp.length + k - 1])
      const lq = logSoftmax(student[sp.length + k - 1])
      let kl = 0
      for (let v = 0; v < lp.length; v++) kl += Math.exp(lp[v]) * (lp[v] - lq[v])
      sum += kl
      n++
    }
  }
  return sum / n
}

/** A rank-2 adapter on q/v/down_proj with random A and B (so it changes the model), and its merged checkpoint. */
export const randomAdapter = async () => {
  const targetModules = ["q_proj", "v_proj", "down_proj"]
  const targets = await Effect.runPromise(loraTargets(model.checkpoint, targetModules))
  const config = await Effect.runPromise(loraConfigFor(model.checkpoint, { r: 2, loraAlpha: 4, targetModules }))
  const rand = mulberry32(3)
  const values = Object.fromEntries(
    targets.flatMap((t) => [
      [`lora.${t.module}.A`, Float32Array.from({ length: 2 * t.inFeatures }, () => (rand() - 0.5) * 0.2)],
      [`lora.${t.module}.B`, Float32Array.from({ length: 2 * t.outFeatures }, () => (rand() - 0.5) * 0.2)],
    ]),
  )
  const adapter = loraAdapter(config, targets, values)
  const merged = tempDir("pipe-distill-merged-")
  await Effect.runPromise(mergeLora(MODEL, adapter, merged))
  return { adapter, merged }
}
