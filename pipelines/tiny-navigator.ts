// The navigator (stages/soft-prompts/navigator.ts): models/tiny-base-s tuned on grid pathfinding,
// half shortest paths and half detours with no label, rolled out on held-out grids and written to
// models/tiny-navigator-s, the frozen model of the soft-prompt experiment's pathfinding objective:
//   npx pipe run pipelines/tiny-navigator.ts [--set model.path=DIR] [--set tune-navigator.epochs=8]
import { external, pipeline } from "../src/engine/index.ts"
import { defaults, grids } from "../stages/soft-prompts/experiment.ts"
import { evaluateNavigator, pathfindingCorpus, writeNavigator } from "../stages/soft-prompts/navigator.ts"
import { tuneDomain } from "../stages/tiny-family/train-text.ts"

const model = external.dir("models/tiny-base-s", { name: "model" })
// seed 1: not the experiment's grids (seed 0) nor the held-out ones below (seed 2)
const corpus = pathfindingCorpus({ ...grids, count: 60000, seed: 1 })
const navigator = tuneDomain(
  { epochs: 5, batchSize: 32, lr: 3e-3, warmupSteps: 20, minLrRatio: 0.1, weightDecay: 0.01, maxGradNorm: 1, maxLength: 128, seed: 0, checkpointEvery: 50, threads: 0, genres: [], pack: true },
  { model, texts: corpus },
  "tune-navigator",
)
const evaluation = evaluateNavigator(
  { ...grids, count: 256, seed: 2, decodings: defaults.evaluate.decodings, maxNewTokens: defaults.evaluate.maxNewTokens, batchSize: 64, threads: 0 },
  { model: navigator.tuned, tokenizer: navigator.tokenizer },
)
const written = writeNavigator(
  { outDir: "models/tiny-navigator-s", name: "tiny-navigator-s", startedFrom: "models/tiny-base-s", command: "npx pipe run pipelines/tiny-navigator.ts" },
  { model: navigator.tuned, tokenizer: navigator.tokenizer, evaluation },
)

export default pipeline("tiny-navigator", { evaluation, written })
