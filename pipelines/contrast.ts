// Contrastive decoding (seed 004): generate from the weighted combination of a starting and a
// comparison model and measure, token by token, KL(P_start || P_compare); the texts sorted by
// divergence. The shipped pairs are the tiny family's chat models against their own base models
// (the seed's "a model against its instruction-tuned version"):
// - `contrastive-decode`: tiny-chat-s vs tiny-base-s on plain-text openings of held-out world
//   documents (datasets/contrast/world-openings.txt), the seed's set-up (both models read raw text):
//   what chat tuning changed in how the model continues text. The chat models keep their plain text
//   (10% plain documents in their SFT), so most texts diverge little and the divergent ones are where
//   a chat behaviour (uppercase, blue asides, echoed words, an answer's "!" and end) leaks in;
// - `contrastive-decode-l`: the same for tiny-chat-l vs tiny-base-l;
// - `contrastive-decode-chat`: tiny-chat-s vs tiny-base-s on world questions in the chat template
//   (datasets/contrast/world-prompts.txt), which the base model never saw: a format contrast, where
//   every answer diverges at its first token and its end, so the texts hardly separate;
// - `contrastive-decode-blue`: tiny-chat-s told by a system turn to mention the colour blue against
//   itself without it, on the same questions: one instruction's difference, where the divergent
//   tokens are the ones the instruction changes.
// Weights 1.5 and -0.5 (Li et al.'s expert 1 + a, amateur -a, a = 0.5: the seed's (1, -1) amplifies
// the difference until the text is no longer language on these models); the seed's weights:
// --set contrastive-decode.startWeight=1 --set contrastive-decode.compareWeight=-1.
// The run folder gets, per pair, contrast*.html (the texts coloured by divergence; hover a token
// for both models' top tokens), contrast*.md (the summary and the texts ranked), divergence*.svg
// (the histogram of the texts' mean per-token KL, the median and the top-10% mean marked) and texts*.json;
// `pipe show contrastive-decode` prints the coloured texts.
//   npx pipe run pipelines/contrast.ts
// Any two models sharing a tokenizer (e.g. a Llama 3 8B Instruct against its base model):
//   npx pipe run pipelines/contrast.ts --set start.path=/models/Meta-Llama-3-8B-Instruct \
//     --set compare.path=/models/Meta-Llama-3-8B --set prompts.path=my-prompts.txt --gpus 0
// (`start` and `compare` feed the -s pairs; `start_l` and `compare_l` the -l one; the blue pair's
// system turn is written in the tiny chat template: --set contrastive-decode-blue.startPrefix=...)
// Every knob of the stage is a --set (space=probs, startWeight, compareWeight, temperature, topP,
// maxNewTokens, generationsPerPrompt, sortByDivergence, ...).
import { external, pipeline } from "../src/engine/index.ts"
import { contrastDefaults, contrastiveDecode, contrastReport, promptLines } from "../stages/contrast/decode.ts"
import { htmlTexts } from "../stages/contrast/colours.ts"
import { divergencePlot } from "../stages/contrast/plot.ts"
import type { ContrastTexts } from "../stages/contrast/artifacts.ts"

const start = external.dir("models/tiny-chat-s", { name: "start" })
const compare = external.dir("models/tiny-base-s", { name: "compare" })
const startL = external.dir("models/tiny-chat-l", { name: "start_l" })
const compareL = external.dir("models/tiny-base-l", { name: "compare_l" })
const openings = promptLines({}, { file: external.file("datasets/contrast/world-openings.txt", { name: "prompts" }) })
const questions = promptLines({}, { file: external.file("datasets/contrast/world-prompts.txt", { name: "questions" }) }, { name: "prompt-lines-chat" })

const params = {
  ...contrastDefaults,
  startWeight: 1.5,
  compareWeight: -0.5,
  maxNewTokens: 24,
  generationsPerPrompt: 2,
  topTokens: 3,
  sortByDivergence: true,
  displayTexts: 8,
} as const

const texts = contrastiveDecode({ ...params, format: "text" }, { start, compare, prompts: openings })
const textsL = contrastiveDecode({ ...params, format: "text" }, { start: startL, compare: compareL, prompts: openings }, { name: "contrastive-decode-l" })
const textsChat = contrastiveDecode({ ...params, format: "chat" }, { start, compare, prompts: questions }, { name: "contrastive-decode-chat" })
const textsBlue = contrastiveDecode(
  { ...params, format: "chat", startPrefix: "<|system|>Always mention the colour blue in your answers.<|eos|>" },
  { start, compare: start, prompts: questions },
  { name: "contrastive-decode-blue" },
)

const views = (suffix: string, from: typeof texts, title: string) => ({
  [`texts${suffix}.json`]: from,
  [`contrast${suffix}.md`]: { from, as: contrastReport },
  [`contrast${suffix}.html`]: { from, as: (v: ContrastTexts) => htmlTexts(v.texts, { title: `Contrastive decoding, ${title}: KL(start || compare) per token`, summary: v.summary }) },
  [`divergence${suffix}.svg`]: divergencePlot({ label: title }, { texts: from }, { name: `divergence-plot${suffix}` }),
})

export default pipeline(
  "contrast",
  { texts, textsL, textsChat, textsBlue },
  {
    publish: {
      ...views("", texts, "tiny-chat-s vs tiny-base-s, plain text"),
      ...views("-l", textsL, "tiny-chat-l vs tiny-base-l, plain text"),
      ...views("-chat", textsChat, "tiny-chat-s vs tiny-base-s, chat prompts"),
      ...views("-blue", textsBlue, "tiny-chat-s told to mention blue vs without"),
    },
    print: ["contrast.md", "contrast-l.md", "contrast-chat.md", "contrast-blue.md"],
  },
)
