// Trains, evaluates and publishes one size of the tiny family: models/tiny-base-l and
// models/tiny-chat-l (the same nodes as in pipelines/tiny-family.ts, which also prints the bars
// table over both sizes; run this and the other size's file at once to use two processes).
//   npx tsx src/cli/main.ts run pipelines/tiny-family-l.ts
import { pipeline } from "../src/engine/index.ts"
import { familyPublished } from "../stages/tiny-family/family.ts"

const m = familyPublished("l")
export default pipeline("tiny-family-l", { base: m.base, chat: m.chat })
