// Domain blending (seed 003): steer a big model with the difference between a small model tuned on
// a text domain and the same small model untuned, big/T_b + (tuned/T_t − untuned/T_u) on their
// logits, with the three temperatures tuned for validation perplexity (TPE, 100 trials), then test
// perplexity by tokens of context, the top-5-only blend the seed's API allowed, and samples:
//   npx pipe run pipelines/blend.ts
// On the tiny family: big = tiny-base-l, small untuned = tiny-base-s, small tuned = tiny-base-s
// tuned here on the stories of the plain corpus (tune-domain, as pipelines/tiny-stories.ts), tested
// on the held-out stories of datasets/tiny-world. big and untuned are named externals, so the same
// pipeline runs on real local checkpoints that share a tokenizer, the small tuned model being the
// untuned one tuned on the corpus stories:
//   npx pipe run pipelines/blend.ts --set big.path=/models/Llama-2-13b-hf \
//     --set untuned.path=/models/Llama-2-7b-hf --set texts.path=fairytales.txt --set held-out.genre= --gpus 0
// (a checkpoint tuned elsewhere enters as tunedFromDirectory(external.dir(DIR)) in place of
// tuneDomain, as pipelines/proxy-tune.ts does with its chat model).
// The run folder gets blend.md (printed at the end), perplexity-vs-tokens-back.svg and
// validation-perplexity-over-trials.svg. Wiring and defaults: stages/blend/experiment.ts.
import { external, pipeline } from "../src/engine/index.ts"
import { defaultPlainCorpusOptions } from "../src/text/synthetic/plain.ts"
import { blendExperiment, publishBlend } from "../stages/blend/experiment.ts"
import { plainCorpus } from "../stages/tiny-family/plain-corpus.ts"
import { tuneDomain } from "../stages/tiny-family/train-text.ts"

const untuned = external.dir("models/tiny-base-s", { name: "untuned" })
// the recipe of pipelines/tiny-stories.ts; on the shipped tiny-base-s the test stories' perplexity
// goes 1.411 -> 1.373 (README)
const tuned = tuneDomain(
  { epochs: 4, batchSize: 32, lr: 1e-3, warmupSteps: 10, minLrRatio: 0.1, weightDecay: 0.01, maxGradNorm: 1, maxLength: 128, seed: 0, checkpointEvery: 20, threads: 0, genres: ["story"] },
  { model: untuned, texts: plainCorpus(defaultPlainCorpusOptions) },
)

const experiment = blendExperiment({
  kind: "blend",
  models: { big: external.dir("models/tiny-base-l", { name: "big" }), tuned: { weights: tuned.tuned, tokenizer: tuned.tokenizer }, untuned },
  // the stories never trained on (the plain corpus' held-out documents)
  texts: external.file("datasets/tiny-world/heldout.jsonl", { name: "texts" }),
  heldOut: { genre: "story" },
  prompts: ["Once upon a time", "The old fox", "In a small town by the river"],
})

export default pipeline("blend", { report: experiment.report }, publishBlend("blend", experiment))
