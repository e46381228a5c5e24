// Trains, evaluates and publishes one size of the tiny family: models/tiny-base-s and
// models/tiny-chat-s (the same nodes as in pipelines/tiny-family.ts, which also prints the bars
// table over both sizes; run this and the other size's file at once to use two processes).
//   npx tsx src/cli/main.ts run pipelines/tiny-family-s.ts
import { pipeline } from "../src/engine/index.ts"
import { familyPublished } from "../stages/tiny-family/family.ts"

const m = familyPublished("s")
export default pipeline("tiny-family-s", { base: m.base, chat: m.chat })
