// Prompt baking swept over LoRA rank x learning rate x two system prompts (blue and capitals):
// 8 trainings. The trajectories and teacher logits depend on the system prompt only, so they are
// sampled once per prompt and shared by the 4 training points of that prompt, as are the base and
// prompted evaluations. Training and evaluation are GPU stages: with
//   npx pipe run pipelines/bake-sweep.ts --gpus 0,1,2,3
// the lora-train nodes spread over the four devices (without GPUs they run on the CPU, --jobs at a
// time). The eight comparisons are gathered into one table (sweep.md, printed at the end of the run;
// sweep.csv, sweep.json); `npx pipe table <run> compare` shows every number of each comparison. As
// in blue.ts, --set model.path=DIR points it at a real local HF checkpoint.
import { pipeline, sweep, zip } from "../src/engine/index.ts"
import { behaviours } from "../src/text/behaviours.ts"
import { bakeExperiment, bakeSweepTable, peftDirectory, publishBakePlots } from "../stages/baking/experiment.ts"
import { publishTable } from "../stages/table.ts"

// the system prompt and the checker that recognises its behaviour vary together
const prompts = zip({
  systemPrompt: [behaviours.blue.systemPrompts[0], behaviours.caps.systemPrompts[0]],
  checker: [{ behaviour: "blue" }, { behaviour: "caps" }] as const,
})

const experiment = bakeExperiment({ ...prompts, lora: { rank: sweep([4, 16]), lr: sweep([3e-3, 1e-2]) } })
const table = bakeSweepTable(experiment.comparison)

// one table for the sweep; each point's plots (kl-per-epoch[<point>].svg, behaviour[<point>].svg) and
// adapter as a PEFT directory (adapter[<point>]/)
export default pipeline(
  "bake-sweep",
  { table, plots: experiment.plots },
  {
    publish: { ...publishTable(table, "sweep"), ...publishBakePlots(experiment), adapter: { from: experiment.adapter, write: peftDirectory } },
    print: ["sweep.md"],
  },
)
