// The divergence search (seed 004): an assistant model writes new prompts from the bank's most
// divergent ones; each is scored by contrastive divergence between a starting and a comparison
// model (mean per-token KL(P_start || P_compare) along its contrastive continuations) and joins the
// bank when it diverges at least as much as the bank's median. Every cycle is a cached node on the
// previous one: a killed search resumes at its cycle, and a longer search (PIPE_SEARCH_CYCLES=6)
// reuses the cycles of a shorter one. The run folder gets search.md (per cycle: the bank's mean,
// candidates parsed and rejected, admissions; the most divergent prompts) and bank.json; wall time
// per cycle is the metric cycle_seconds (`pipe show search#2`).
//   npx pipe run pipelines/divergence-search.ts
// Shipped setting: the models of pipelines/contrast.ts (models/tiny-chat with and without a system
// turn asking it to mention blue), the same tiny chat model as the assistant and the embedding
// model. It cannot write good prompts; the parser and the counts are built for that. Real models
// and any OpenAI-compatible assistant (key from $OPENAI_API_KEY, or the variable apiKeyEnv names):
//   npx pipe run pipelines/divergence-search.ts --set start.path=/models/Llama-3-8B-Instruct \
//     --set compare.path=/models/Llama-3-8B --set search.startPrefix='' --set seed-bank.startPrefix='' \
//     --set search.assistant=http --set search.baseUrl=https://api.openai.com/v1 --set search.model=gpt-4o-mini
// (`pipe serve-model DIR` serves a local model at such an endpoint.)
import { external, pipeline } from "../src/engine/index.ts"
import { blueContrast, promptLines } from "../stages/contrast/decode.ts"
import { searchChain, searchDefaults, searchReport } from "../stages/contrast/search.ts"

const cycles = Number(process.env.PIPE_SEARCH_CYCLES ?? 3)
if (!Number.isInteger(cycles) || cycles < 1) throw new Error(`PIPE_SEARCH_CYCLES must be a positive integer, got ${process.env.PIPE_SEARCH_CYCLES}`)

const banks = searchChain({
  start: external.dir("models/tiny-chat", { name: "start" }),
  compare: external.dir("models/tiny-chat", { name: "compare" }),
  local: external.dir("models/tiny-chat", { name: "local" }),
  instructions: external.file("datasets/contrast/search-instructions.json", { name: "instructions" }),
  seeds: promptLines({}, { file: external.file("datasets/contrast/search-seeds.txt", { name: "seeds" }) }),
  scoring: { ...blueContrast, includePrompt: false },
  search: searchDefaults,
  cycles,
})
const last = banks[banks.length - 1]

export default pipeline("divergence-search", { bank: last }, { publish: { "bank.json": last, "search.md": { from: last, as: (b) => searchReport(b) } }, print: ["search.md"] })
