// `pipe doctor`: execution providers, GPUs, library versions, and what is missing for CUDA.
import { Effect } from "effect"
import { doctor } from "../runtime/doctor.ts"
import { out, type Command } from "./args.ts"

export const command: Command = {
  run: async () => {
    const report = await Effect.runPromise(doctor())
    for (const line of report.lines) out(line)
    return 0
  },
}
