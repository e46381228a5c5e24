// Soft prompts for evaluation (seed 002): how much conditioning a behaviour needs, read as the test
// loss of a frozen model with k trained soft-prompt tokens, k in {0, 1, 4, 16, 64}, for five
// objectives: autoregressive on the model's own distribution, skip-1, repetition of a fixed
// string, chat detuning (a chat model on base-domain text, against the base model's own loss) and
// conditional pathfinding (the prompt produced from the path's length ratio by an MLP; greedy and
// sampled rollouts per condition value). The data of an objective is prepared once and shared by its k
// sweep; with --gpus the trainings spread over the devices:
//   npx pipe run pipelines/soft-prompts.ts [--gpus 0,1]
// Models and the text are named externals: --set model.path=DIR (autoregressive, skip, repetition;
// default models/tiny-base-s), --set chat.path=DIR and --set base.path=DIR (detuning; tiny-chat-s
// and tiny-base-s), --set navigator.path=DIR (pathfinding; models/tiny-navigator-s, trained by
// pipelines/tiny-navigator.ts), --set corpus.path=FILE (the base's own text and the detuning text;
// datasets/tiny-world/train.jsonl). The run folder gets
// soft-prompts.md (printed at the end), soft-prompts.json, soft-prompts.svg and, per trained plain
// prompt, a PEFT prompt-tuning directory prompt[<point>]/. Defaults: stages/soft-prompts/experiment.ts.
import { pipeline } from "../src/engine/index.ts"
import { publishSoftPrompts, softPromptExperiment } from "../stages/soft-prompts/experiment.ts"

const experiment = softPromptExperiment()

export default pipeline("soft-prompts", { report: experiment.report }, publishSoftPrompts(experiment))
