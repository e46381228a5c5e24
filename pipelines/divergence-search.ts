// The divergence search (seed 004): an assistant model writes new prompts from the bank's most
// divergent ones; each is scored by contrastive divergence between a starting and a comparison
// model (mean per-token KL(P_start || P_compare) along its contrastive continuations) and joins the
// bank when it diverges at least as much as the bank's median. Every cycle is a cached node on the
// previous one: a killed search resumes at its cycle, and a longer search (PIPE_SEARCH_CYCLES=6)
// reuses the cycles of a shorter one. The run folder gets search.md (per cycle: the bank's mean,
// candidates parsed and rejected, admissions; the most divergent prompts) and bank.json; wall time
// per cycle is the metric cycle_seconds (`pipe show search#2`).
//   npx pipe run pipelines/divergence-search.ts
// Shipped setting: tiny-chat-s (start) against its base model tiny-base-s (compare), the pair of
// pipelines/contrast.ts's `contrastive-decode-chat`: the bank holds questions and the assistant writes
// questions, so they are scored as user turns in the chat template (format chat), where the chat
// model answers and the base model never saw the format. tiny-chat-s is the assistant and the
// embedding model. It cannot write good prompts; the parser and the counts are built for that.
// Real models and any OpenAI-compatible assistant (key from $OPENAI_API_KEY, or the variable
// apiKeyEnv names):
//   npx pipe run pipelines/divergence-search.ts --set start.path=/models/Llama-3-8B-Instruct \
//     --set compare.path=/models/Llama-3-8B --set search.assistant=http --set search.baseUrl=https://api.openai.com/v1 --set search.model=gpt-4o-mini
// (`pipe serve-model DIR` serves a local model at such an endpoint.)
import { external, pipeline } from "../src/engine/index.ts"
import { contrastDefaults, promptLines } from "../stages/contrast/decode.ts"
import { searchChain, searchDefaults, searchReport } from "../stages/contrast/search.ts"

const cycles = Number(process.env.PIPE_SEARCH_CYCLES ?? 3)
if (!Number.isInteger(cycles) || cycles < 1) throw new Error(`PIPE_SEARCH_CYCLES must be a positive integer, got ${process.env.PIPE_SEARCH_CYCLES}`)

const banks = searchChain({
  start: external.dir("models/tiny-chat-s", { name: "start" }),
  compare: external.dir("models/tiny-base-s", { name: "compare" }),
  local: external.dir("models/tiny-chat-s", { name: "local" }),
  instructions: external.file("datasets/contrast/search-instructions.json", { name: "instructions" }),
  seeds: promptLines({}, { file: external.file("datasets/contrast/search-seeds.txt", { name: "seeds" }) }),
  // weights as in pipelines/contrast.ts (Li et al.'s 1 + a, -a with a = 0.5)
  scoring: { ...contrastDefaults, startWeight: 1.5, compareWeight: -0.5, maxNewTokens: 24, generationsPerPrompt: 2, format: "chat", includePrompt: false },
  search: searchDefaults,
  cycles,
})
const last = banks[banks.length - 1]

export default pipeline("divergence-search", { bank: last }, { publish: { "bank.json": last, "search.md": { from: last, as: (b) => searchReport(b) } }, print: ["search.md"] })
