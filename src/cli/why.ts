// `pipe why <node>`: what changed in a node's key since its previous execution.
import { componentsOf, diffComponents } from "../engine/explain.ts"
import { needOne, out, type Command } from "./args.ts"
import { latest, readStore } from "./records.ts"

export const command: Command = {
  run: (args) => {
    const rows = latest(readStore(args), needOne(args, "a node"))
    const [now] = rows
    const before = rows.find((r) => r.key !== now.key)
    out(`${now.node}: key ${now.key.slice(0, 12)} (${now.status}, run ${now.run_id})`)
    if (before === undefined) {
      out("no earlier execution with a different key")
      return 0
    }
    out(`previous key ${before.key.slice(0, 12)} (${before.status}, run ${before.run_id}); changed:`)
    for (const line of diffComponents(componentsOf(before), componentsOf(now))) out(`  ${line}`)
    return 0
  },
}
