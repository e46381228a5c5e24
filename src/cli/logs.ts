// `pipe logs <node>`: the log of a node's latest execution.
import { existsSync, readFileSync } from "node:fs"
import { needOne, UsageError, type Command } from "./args.ts"
import { latest, readStore } from "./records.ts"

export const command: Command = {
  run: (args) => {
    const e = latest(readStore(args), needOne(args, "a node"))[0]
    if (!existsSync(e.log_path)) throw new UsageError(`log ${e.log_path} no longer exists`)
    process.stdout.write(readFileSync(e.log_path, "utf8"))
    return 0
  },
}
