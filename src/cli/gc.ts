// `pipe gc`: delete payloads no cache entry refers to, and work directories of interrupted nodes.
import { CacheError } from "../engine/errors.ts"
import { out, type Command } from "./args.ts"
import { openStore } from "./records.ts"

export const command: Command = {
  run: (args) => {
    const store = openStore(args)
    if (store.liveClaims().size > 0) throw new CacheError({ path: store.dir, message: `a run is in progress on ${store.dir}; run pipe gc when it is done` })
    const { files, workDirs, bytes } = store.gc()
    out(`removed ${files} unreferenced payload files and ${workDirs} work directories of interrupted nodes, freed ${(bytes / 2 ** 20).toFixed(1)} MiB`)
    return 0
  },
}
