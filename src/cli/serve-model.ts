// `pipe serve-model DIR`: an OpenAI-compatible server (/v1/chat/completions, /v1/completions,
// /v1/models) over a local model directory, until Ctrl-C. Named after what it serves, beside
// `pipe serve` (the dashboard over runs/ and cache/).
import { Effect, Fiber } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { int, needOne, one, out, type Command, UsageError } from "./args.ts"

export const command: Command = {
  options: ["--host", "--port", "--name", "--threads"],
  run: async (args) => {
    const dir = path.resolve(needOne(args, "a model directory"))
    const host = one(args, "--host") ?? "127.0.0.1"
    const portText = one(args, "--port") ?? "8000"
    if (!/^\d+$/.test(portText) || Number(portText) > 65535) throw new UsageError(`--port expects a port number (0 for any free one), got ${portText}`)
    const name = one(args, "--name") ?? path.basename(dir)
    const threads = args.options.has("--threads") ? int(args, "--threads", 1) : 0
    // the model's graphs (weights are linked, not copied) go to a temporary directory removed on exit
    const graphDir = fs.mkdtempSync(path.join(os.tmpdir(), "pipe-serve-model-"))
    const [{ openLocalModel }, { serveModel }] = await Promise.all([import("../models/chat.ts"), import("../model-server/server.ts")])
    const program = Effect.scoped(
      Effect.gen(function* () {
        const model = yield* openLocalModel(dir, { graphDir, ...(threads > 0 ? { threads } : {}) })
        const server = yield* serveModel(model, { host, port: Number(portText), name })
        out(`serving ${dir} as model "${name}" at ${server.url} (OpenAI-compatible: /chat/completions, /completions, /models); Ctrl-C stops`)
        return yield* Effect.never
      }),
    )
    const fiber = Effect.runFork(program)
    const stop = () => Effect.runFork(Fiber.interrupt(fiber))
    process.once("SIGINT", stop)
    process.once("SIGTERM", stop)
    const exit = await Effect.runPromise(Fiber.await(fiber))
    fs.rmSync(graphDir, { recursive: true, force: true })
    if (exit._tag === "Failure" && !exit.cause.reasons.every((r) => r._tag === "Interrupt")) {
      const { errorMessage } = await import("../engine/errors.ts")
      const { Cause } = await import("effect")
      process.stderr.write(`pipe serve-model: ${errorMessage(Cause.squash(exit.cause))}\n`)
      return 2
    }
    return 0
  },
}
