// Trains, evaluates and publishes the tiny model family of issue 14: models/tiny-base-s,
// tiny-base-l (pretrained on the plain corpus of the synthetic world) and tiny-chat-s, tiny-chat-l
// (chat SFT starting from the base of their size), one tokenizer; prints the bars table.
//   npx tsx src/cli/main.ts run pipelines/tiny-family.ts
// The two sizes share the corpus and tokenizer nodes; to train them in two processes at once run
// pipelines/tiny-family-s.ts and tiny-family-l.ts (the same nodes), then this one (all cached but
// the table). Wiring and recipe: stages/tiny-family/family.ts.
import { pipeline } from "../src/engine/index.ts"
import { familyPublished } from "../stages/tiny-family/family.ts"
import { familySummary } from "../stages/tiny-family/summary.ts"

const s = familyPublished("s")
const l = familyPublished("l")
const summary = familySummary(
  {},
  {
    baseSText: s.baseEval.text, baseSChat: s.baseEval.chat, baseSPicks: s.baseEval.picks,
    baseLText: l.baseEval.text, baseLChat: l.baseEval.chat, baseLPicks: l.baseEval.picks,
    chatSText: s.chatEval.text, chatSChat: s.chatEval.chat, chatSPicks: s.chatEval.picks,
    chatLText: l.chatEval.text, chatLChat: l.chatEval.chat, chatLPicks: l.chatEval.picks,
  },
)

export default pipeline(
  "tiny-family",
  { baseS: s.base, chatS: s.chat, baseL: l.base, chatL: l.chat, summary },
  { publish: { "family.md": { from: summary, as: (v) => v.markdown }, "family.json": summary }, print: ["family.md"] },
)
