// `pipe gc`: delete payloads no cache entry refers to.
import { out, UsageError, type Command } from "./args.ts"
import { openStore } from "./records.ts"

export const command: Command = {
  run: (args) => {
    const store = openStore(args)
    if (store.liveClaims() > 0) throw new UsageError("a run is in progress on this cache; run pipe gc when it is done")
    const { files, bytes } = store.gc()
    out(`removed ${files} unreferenced payload files, freed ${(bytes / 2 ** 20).toFixed(1)} MiB`)
    return 0
  },
}
