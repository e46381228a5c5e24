// `pipe doctor`: execution providers, GPUs, library versions, and what is missing for CUDA;
// `pipe doctor --cache`: check the cache database, move a damaged one aside, rebuild its entries.
import { out, type Command } from "./args.ts"
import { cacheDir } from "./records.ts"

export const command: Command = {
  flags: ["--cache"],
  run: async (args) => {
    if (args.flags.has("--cache")) {
      const { doctorCache } = await import("../engine/cache-doctor.ts")
      const report = doctorCache(cacheDir(args))
      for (const line of report.lines) out(line)
      return report.ok ? 0 : 1
    }
    const [{ Effect }, { doctor }] = await Promise.all([import("effect"), import("../runtime/doctor.ts")])
    const report = await Effect.runPromise(doctor())
    for (const line of report.lines) out(line)
    return 0
  },
}
