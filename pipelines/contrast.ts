// Contrastive decoding (seed 004): generate from the weighted combination of a starting and a
// comparison model, w_s = 1, w_c = -1 (what the starting model says and the comparison model does
// not), on questions about the tiny chat world; every text with its per-token KL(P_start ||
// P_compare), sorted by divergence. The run folder gets contrast.html (the texts coloured by
// divergence; hover a token for both models' top tokens), contrast.md (the summary and the texts
// ranked) and texts.json; `pipe show contrastive-decode` prints the coloured texts.
//   npx pipe run pipelines/contrast.ts
// Weights 1.5 and -0.5 (stages/contrast/decode.ts blueContrast); the seed's (1, -1):
// --set contrastive-decode.startWeight=1 --set contrastive-decode.compareWeight=-1.
// The shipped pair: models/tiny-chat told by a system turn to mention the colour blue, against the
// same model without it, so the divergent tokens are the ones the instruction changes. Any two
// models sharing a tokenizer (e.g. a Llama 3 8B Instruct against its base model):
//   npx pipe run pipelines/contrast.ts --set start.path=/models/Meta-Llama-3-8B-Instruct \
//     --set compare.path=/models/Meta-Llama-3-8B --set contrastive-decode.startPrefix='' \
//     --set contrastive-decode.format=text --set prompts.path=my-prompts.txt --gpus 0
// Every knob of the stage is a --set (space=probs, startWeight, compareWeight, temperature, topP,
// maxNewTokens, generationsPerPrompt, sortByDivergence, ...).
import { external, pipeline } from "../src/engine/index.ts"
import { blueContrast, contrastiveDecode, contrastReport, promptLines } from "../stages/contrast/decode.ts"
import { htmlTexts } from "../stages/contrast/colours.ts"

const start = external.dir("models/tiny-chat", { name: "start" })
const compare = external.dir("models/tiny-chat", { name: "compare" })
const prompts = promptLines({}, { file: external.file("datasets/contrast/world-prompts.txt", { name: "prompts" }) })

const texts = contrastiveDecode(
  {
    ...blueContrast,
    topTokens: 3,
    sortByDivergence: true,
    displayTexts: 8,
  },
  { start, compare, prompts },
)

export default pipeline(
  "contrast",
  { texts },
  {
    publish: {
      "texts.json": texts,
      "contrast.md": { from: texts, as: contrastReport },
      "contrast.html": { from: texts, as: (v) => htmlTexts(v.texts, { title: "Contrastive decoding: KL(start || compare) per token", summary: v.summary }) },
    },
    print: ["contrast.md"],
  },
)
