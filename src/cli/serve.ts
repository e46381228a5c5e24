// `pipe serve [--host H] [--port P]`: the local dashboard over the cache and runs directories (see
// src/serve/). Loopback only unless --host says otherwise; it reads, never writes, and runs until
// interrupted.
import { existsSync } from "node:fs"
import { join, resolve } from "node:path"
import { out, one, UsageError, type Command } from "./args.ts"
import { cacheDir, runsDir } from "./records.ts"

export const command: Command = {
  options: ["--host", "--port"],
  run: async (args) => {
    if (args.positional.length > 0) throw new UsageError("pipe serve takes no arguments, only --host, --port, --cache-dir and --runs-dir")
    const host = one(args, "--host") ?? "127.0.0.1"
    const portText = one(args, "--port") ?? "8765"
    if (!/^\d+$/.test(portText) || Number(portText) > 65535) throw new UsageError(`--port expects a port number (0 for any free one), got ${portText}`)
    const cache = cacheDir(args)
    // a cache that never ran would have to be created to be opened: the dashboard writes nothing
    if (!existsSync(join(cache, "cache.sqlite"))) throw new UsageError(`no cache database at ${resolve(cache, "cache.sqlite")}: nothing has run with this cache directory yet (run a pipeline, or pass --cache-dir)`)
    const [{ Effect, Layer, Fiber }, { dashboard }, { Records, liveStore }] = await Promise.all([import("effect"), import("../serve/server.ts"), import("../serve/records.ts")])
    const records = new Records(liveStore(cache), runsDir(args))
    const fiber = Effect.runFork(
      Layer.launch(
        dashboard({
          records,
          host,
          port: Number(portText),
          onListening: (url) => out(`pipe serve: ${url} (read-only over ${resolve(cache)} and ${resolve(runsDir(args))}; Ctrl-C to stop)`),
        }),
      ),
    )
    const stop = () => Effect.runFork(Fiber.interrupt(fiber))
    process.once("SIGINT", stop)
    process.once("SIGTERM", stop)
    const exit = await Effect.runPromise(Fiber.await(fiber))
    if (exit._tag === "Failure") {
      const { Cause } = await import("effect")
      if (!Cause.hasInterruptsOnly(exit.cause)) throw Cause.squash(exit.cause)
    }
    return 0
  },
}
