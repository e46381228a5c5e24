// Proxy tuning (Liu et al. 2024) on the tiny family: tune the big base model at decoding time with
// the difference between a small chat model and its base, tiny-base-l + α(tiny-chat-s − tiny-base-s),
// α searched for perplexity on the answers of held-out chats (rendered with the chat template, the
// answer's tokens scored: stages/blend/held-out.ts), then measured
// against tiny-chat-l (the same size tuned directly) on greedy held-out chat questions:
//   gap closed = (acc_proxy − acc_base_l) / (acc_chat_l − acc_base_l)
//   npx pipe run pipelines/proxy-tune.ts
// With real local checkpoints sharing a tokenizer (e.g. Llama-2-13b + α(7b-chat − 7b)):
//   npx pipe run pipelines/proxy-tune.ts --set big.path=/models/Llama-2-13b-hf \
//     --set tuned.path=/models/Llama-2-7b-chat-hf --set untuned.path=/models/Llama-2-7b-hf \
//     --set reference.path=/models/Llama-2-13b-chat-hf --gpus 0
// The run folder gets proxy-tune.md (perplexities, by tokens back, samples) and proxy-chat.md
// (accuracy, gap closed, behaviour rates), printed at the end, and the two plots.
import { external, pipeline } from "../src/engine/index.ts"
import { blendExperiment, memberInputs, publishBlend, tunedFromDirectory } from "../stages/blend/experiment.ts"
import { proxyChat } from "../stages/blend/proxy-chat.ts"

const models = {
  big: external.dir("models/tiny-base-l", { name: "big" }),
  tuned: tunedFromDirectory(external.dir("models/tiny-chat-s", { name: "tuned" })),
  untuned: external.dir("models/tiny-base-s", { name: "untuned" }),
}
const reference = external.dir("models/tiny-chat-l", { name: "reference" })
const questions = external.file("datasets/tiny-chat/heldout-chat.jsonl", { name: "questions" })

const experiment = blendExperiment({
  kind: "proxy",
  models,
  // the held-out chats with their reference answers, as the chat models were trained to write them
  texts: questions,
  heldOut: { format: "chat", field: "reference" },
  // α is one parameter: TPE settles it in a few dozen trials (seed 003's 100 were for three
  // temperatures), and a trial over the ~400 validation chats costs seconds on CPU
  search: { trials: 30 },
  // the answers start 8 to 31 tokens into the rendered chats (median 16): with 32 tokens back only
  // the long answers' tails (27% of the answer tokens) could be bucketed, with 16, 77%
  evaluate: { maxTokensBack: 16 },
  generate: { chat: true },
  prompts: ["What age is Kodis?", "Describe the town of Brindle.", "What is 12 plus 7?"],
})
// α = 1 (the paper's) and above, beside the searched α (on the family 1.045, close to α = 1: README)
const chat = proxyChat({ alphas: [1, 1.5, 2], limit: 0, maxNewTokens: 48, temperature: 0.7, seed: 0, batchSize: 32, threads: 0 }, { ...memberInputs(models), reference, questions, search: experiment.search })

const published = publishBlend("proxy-tune", experiment)
export default pipeline(
  "proxy-tune",
  { report: experiment.report, chat },
  { publish: { ...published.publish, "proxy-chat.md": { from: chat, as: (c) => c.markdown }, "proxy-chat.json": chat }, print: [...published.print, "proxy-chat.md"] },
)
