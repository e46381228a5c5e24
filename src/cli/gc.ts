// `pipe gc`: delete payloads no cache entry refers to, and work directories of interrupted nodes
// (not those of Slurm jobs that a killed coordinator left running: the next run adopts them).
import { CacheError } from "../engine/errors.ts"
import { runningSlurmJobs } from "../engine/slurm.ts"
import { out, type Command } from "./args.ts"
import { openStore } from "./records.ts"

export const command: Command = {
  run: async (args) => {
    const store = openStore(args)
    if (store.liveClaims().size > 0) throw new CacheError({ path: store.dir, message: `a run is in progress on ${store.dir}; run pipe gc when it is done` })
    const slurm = await runningSlurmJobs(store.dir)
    const { files, workDirs, bytes } = store.gc(slurm.keys)
    out(`removed ${files} unreferenced payload files and ${workDirs} work directories of interrupted nodes, freed ${(bytes / 2 ** 20).toFixed(1)} MiB`)
    if (slurm.keys.size > 0)
      out(
        slurm.unasked === undefined
          ? `kept the work directories of ${slurm.keys.size} Slurm jobs still running (the next pipe run adopts them)`
          : `kept the work directories of ${slurm.keys.size} submitted Slurm jobs whose state squeue cannot give (${slurm.unasked.replaceAll(/\s*\n\s*/g, "; ")})`,
      )
    return 0
  },
}
