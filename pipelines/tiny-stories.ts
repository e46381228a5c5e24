// Domain tuning for logit blending and proxy tuning (issue 14): tune models/tiny-base-s on the
// stories of the plain corpus only, and print held-out perplexity per genre before and after (the
// stories' should fall, the other genres' rise). Any HF checkpoint directory works:
//   npx tsx src/cli/main.ts run pipelines/tiny-stories.ts [--set model.path=DIR] [--set tune-domain.epochs=8]
// tuneDomain (stages/tiny-family/train-text.ts) is the reusable piece: the blending pipeline calls
// it on its own small model and texts.
import { external, pipeline } from "../src/engine/index.ts"
import { defaultPlainCorpusOptions } from "../src/text/synthetic/plain.ts"
import { comparePerplexity, evaluateText } from "../stages/tiny-family/evaluate-text.ts"
import { plainCorpus } from "../stages/tiny-family/plain-corpus.ts"
import { tuneDomain } from "../stages/tiny-family/train-text.ts"

const model = external.dir("models/tiny-base-s", { name: "model" })
const texts = plainCorpus(defaultPlainCorpusOptions)
const t = tuneDomain(
  { epochs: 4, batchSize: 32, lr: 1e-3, warmupSteps: 10, minLrRatio: 0.1, weightDecay: 0.01, maxGradNorm: 1, maxLength: 128, seed: 0, checkpointEvery: 20, threads: 0, genres: ["story"] },
  { model, texts },
)
const before = evaluateText({ batchSize: 32, threads: 0 }, { model: t.base, tokenizer: t.tokenizer, texts }, { name: "perplexity-base" })
const after = evaluateText({ batchSize: 32, threads: 0 }, { model: t.tuned, tokenizer: t.tokenizer, texts }, { name: "perplexity-tuned" })
const comparison = comparePerplexity({ before: "base", after: "tuned on stories" }, { before, after })

export default pipeline("tiny-stories", { tuned: t.tuned, comparison }, { publish: { "perplexity.md": { from: comparison, as: (v) => v.markdown } }, print: ["perplexity.md"] })
