// Diffuse distributions (seed 001): LoRA-train the model so that, for each training prompt, its
// distribution over the prompt's target strings matches the desired one (uniform 1–10, a uniform
// pick among the world's towns, the seed's binomial B(10, 0.2) with its weights), then sample 1000
// answers per prompt from the untuned and the tuned model, on the training prompts and on held-out
// prompts with other wording and other target sets:
//   npx pipe run pipelines/diffuse.ts
// On a real local HF chat model it runs unchanged:
//   npx pipe run pipelines/diffuse.ts --set model.path=/models/Meta-Llama-3-8B-Instruct --gpus 0
// Prompt sets: --set train_prompts.path=DIR --set test_prompts.path=DIR (the seed's prompt files).
// The wiring and defaults are in stages/diffuse/experiment.ts. The run folder gets report.md
// (printed), report.json, histograms/*.svg and the adapter as a PEFT directory adapter/.
import { pipeline } from "../src/engine/index.ts"
import { diffuseExperiment, publishDiffuse } from "../stages/diffuse/experiment.ts"

const experiment = diffuseExperiment()

export default pipeline("diffuse", { report: experiment.report, histograms: experiment.histograms }, publishDiffuse(experiment))
