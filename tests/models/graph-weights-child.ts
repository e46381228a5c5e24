// Run by graph-weights.test.ts as another user: loads the checkpoint in argv[2], places its graph
// under argv[3] (the user's cache), runs the forward graph on argv[4] (token ids, JSON) and prints
// the logits as JSON, or the error message with exit code 1.
import { Effect } from "effect"
import { Graph } from "../../src/graph/index.ts"
import { loadCheckpoint } from "../../src/models/checkpoint.ts"
import { buildForwardGraph, forwardNames } from "../../src/models/forward.ts"
import { placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { createSession, runSession } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"

const [modelDir, graphDir, seqJson] = process.argv.slice(2)
const seq = JSON.parse(seqJson) as number[]
const program = Effect.gen(function* () {
  const ckpt = yield* loadCheckpoint(modelDir)
  const placement = yield* placeWeights(ckpt, graphDir)
  const g = new Graph("forward")
  buildForwardGraph(g, ckpt, placement)
  const session = yield* createSession(yield* writeGraph(g, placement, "forward"))
  const out = yield* runSession(session, { [forwardNames.ids]: tensor("int64", [1, seq.length], seq), [forwardNames.mask]: tensor("int64", [1, seq.length], seq.map(() => 1)) })
  return Array.from(out[forwardNames.logits].data as Float32Array)
})
Effect.runPromise(program).then(
  (logits) => process.stdout.write(JSON.stringify(logits)),
  (e: unknown) => {
    process.stderr.write(e instanceof Error ? e.message : String(e))
    process.exit(1)
  },
)
