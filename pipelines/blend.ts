// Domain blending (seed 003): steer a big model with the difference between a small model tuned on
// a text domain and the same small model untuned, big/T_b + (tuned/T_t − untuned/T_u) on their
// logits, with the three temperatures tuned for validation perplexity (TPE, 100 trials), then test
// perplexity by tokens of context, the top-5-only blend the seed's API allowed, and samples:
//   npx pipe run pipelines/blend.ts
// On the tiny family: big = tiny-base-l, small untuned = tiny-base-s, small tuned = tiny-base-s
// tuned on the stories genre, held-out stories. Every model is a named external, so the same
// pipeline runs on real local checkpoints that share a tokenizer:
//   npx pipe run pipelines/blend.ts --set big.path=/models/Llama-2-13b-hf \
//     --set tuned.path=/models/my-7b-tuned --set untuned.path=/models/Llama-2-7b-hf \
//     --set texts.path=fairytales.txt --set held-out.genre= --gpus 0
// The run folder gets blend.md (printed at the end), perplexity-vs-tokens-back.svg and
// validation-perplexity-over-trials.svg. Wiring and defaults: stages/blend/experiment.ts.
import { external, pipeline } from "../src/engine/index.ts"
import { blendExperiment, publishBlend } from "../stages/blend/experiment.ts"

const experiment = blendExperiment({
  kind: "blend",
  models: {
    big: external.dir("models/tiny-base-l", { name: "big" }),
    tuned: external.dir("models/tiny-base-s-stories", { name: "tuned" }),
    untuned: external.dir("models/tiny-base-s", { name: "untuned" }),
  },
  texts: external.file("datasets/tiny-family/plain.json", { name: "texts" }),
  heldOut: { genre: "story" },
  prompts: ["Once upon a time", "The old fox", "In a small town by the river"],
})

export default pipeline("blend", { report: experiment.report }, publishBlend("blend", experiment))
