// `pipe gc`: delete payloads no cache entry refers to, and work directories of interrupted nodes
// (not what Slurm jobs that a killed coordinator left behind still need: the next run adopts them).
import { CacheError } from "../engine/errors.ts"
import { unrecordedSlurmJobs } from "../engine/slurm.ts"
import { out, type Command } from "./args.ts"
import { openStore } from "./records.ts"

export const command: Command = {
  run: async (args) => {
    const store = openStore(args)
    if (store.liveClaims().size > 0) throw new CacheError({ path: store.dir, message: `a run is in progress on ${store.dir}; run pipe gc when it is done` })
    const slurm = await unrecordedSlurmJobs(store.dir)
    const { files, workDirs, bytes } = store.gc(slurm)
    out(`removed ${files} unreferenced payload files and ${workDirs} work directories of interrupted nodes, freed ${(bytes / 2 ** 20).toFixed(1)} MiB`)
    if (slurm.workKeys.size > 0)
      out(
        slurm.unasked === undefined
          ? `kept the work directories of ${slurm.workKeys.size} Slurm jobs still running (the next pipe run adopts them)`
          : `kept the work directories of ${slurm.workKeys.size} submitted Slurm jobs whose state squeue cannot give (${slurm.unasked.replaceAll(/\s*\n\s*/g, "; ")})`,
      )
    if (slurm.payloads.size > 0) out(`kept the results of ${slurm.payloads.size} finished Slurm jobs that no run has recorded yet (the next pipe run records them)`)
    return 0
  },
}
