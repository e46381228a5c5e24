// The blue experiment (prompt baking, seed 000): bake the system prompt "Always mention the colour
// blue in your answers." into a LoRA on the un-prompted model, then compare base, prompted and
// baked (KL to the prompted model, behaviour rate, factual accuracy, samples side by side). On the
// shipped models/tiny-chat it takes well under a minute on a 2-core CPU:
//   npx pipe run pipelines/blue.ts
// On a real local HF chat model (e.g. a Llama 3 Instruct directory) it runs unchanged:
//   npx pipe run pipelines/blue.ts --set model.path=/models/Meta-Llama-3-8B-Instruct --gpus 0
// The wiring and the defaults are in stages/baking/experiment.ts; every node can be tuned with
// --set (e.g. --set lora-train.rank=4, --set sample_train.n=8). The run folder gets compare.md
// and compare.json, the plots kl-per-epoch.svg and behaviour.svg, and the table is printed at the end.
import { pipeline } from "../src/engine/index.ts"
import { behaviours } from "../src/text/behaviours.ts"
import { bakeExperiment, publishBake } from "../stages/baking/experiment.ts"

const experiment = bakeExperiment({ systemPrompt: behaviours.blue.systemPrompts[0], checker: { behaviour: "blue" } })

export default pipeline("blue", { comparison: experiment.comparison }, publishBake(experiment))
