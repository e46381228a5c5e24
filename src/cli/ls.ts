// `pipe ls [--limit N]`: recent runs.
import { int, out, type Command } from "./args.ts"
import { readStore, time } from "./records.ts"

export const command: Command = {
  options: ["--limit"],
  run: (args) => {
    for (const r of readStore(args).runs(int(args, "--limit", 20))) {
      const counts = r.summary ? (JSON.parse(r.summary) as { counts?: Record<string, number> }).counts : undefined
      out(`${r.id}  ${r.status.padEnd(11)} ${time(r.started_at)}  ${r.pipeline}${counts ? `  ${Object.entries(counts).map(([k, v]) => `${k}=${v}`).join(" ")}` : ""}`)
    }
    return 0
  },
}
