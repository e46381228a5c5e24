// onnxruntime-node sessions: created from model bytes or a .onnx path, on the CPU provider
// by default or on CUDA with a device id. A CUDA session that cannot be created fails with
// a SessionError; it never falls back to the CPU silently.
import { Data, Effect } from "effect"
import * as fs from "node:fs"
import * as ort from "onnxruntime-node"

import type { Device } from "../engine/stage.ts"

export type { Device }
export const cpu: Device = { kind: "cpu" }
/** CUDA device `deviceId` of this process; `gpu` is its physical index when CUDA_VISIBLE_DEVICES remaps it. */
export const cuda = (deviceId: number, gpu = deviceId): Device => ({ kind: "cuda", deviceId, gpu })

export const describeDevice = (d: Device): string => (d.kind === "cpu" ? "cpu" : `cuda:${d.deviceId}`)

export class SessionError extends Data.TaggedError("SessionError")<{
  readonly model: string
  readonly device: string
  readonly message: string
}> {}

export class RunError extends Data.TaggedError("RunError")<{
  readonly model: string
  readonly message: string
}> {}

export interface SessionOptions {
  readonly device?: Device
  /** ORT graph optimization level; "all" by default. */
  readonly optimization?: "disabled" | "basic" | "extended" | "all"
  /** Write the model as optimized by ORT to this path (for inspecting node counts). */
  readonly optimizedModelPath?: string
  readonly intraOpThreads?: number
  readonly logSeverity?: 0 | 1 | 2 | 3 | 4
}

/**
 * A .onnx file whose external data lives under `externalDataDir` rather than next to it
 * (see src/models/graph-weights.ts): loaded as bytes with that directory as onnxruntime's
 * external-initializer folder, the only place onnxruntime 1.30 then reads weights from.
 */
export interface GraphFile {
  readonly path: string
  readonly externalDataDir: string
}

export interface Session {
  readonly ort: ort.InferenceSession
  /** The model path, or "<bytes>" for in-memory models (used in error messages). */
  readonly model: string
  readonly device: Device
}

const sessionOptions = (o: SessionOptions): ort.InferenceSession.SessionOptions => {
  const device = o.device ?? cpu
  return {
    executionProviders: device.kind === "cpu" ? ["cpu"] : [{ name: "cuda", deviceId: device.deviceId }],
    graphOptimizationLevel: o.optimization ?? "all",
    logSeverityLevel: o.logSeverity ?? 3,
    ...(o.optimizedModelPath ? { optimizedModelFilePath: o.optimizedModelPath } : {}),
    ...(o.intraOpThreads ? { intraOpNumThreads: o.intraOpThreads } : {}),
  }
}

/** Creates a session from model bytes, a self-contained .onnx path, or a GraphFile. */
export const createSession = (model: Uint8Array | string | GraphFile, options: SessionOptions = {}): Effect.Effect<Session, SessionError> => {
  const device = options.device ?? cpu
  const name = typeof model === "string" ? model : model instanceof Uint8Array ? "<bytes>" : model.path
  const create = () => {
    if (typeof model === "string") return ort.InferenceSession.create(model, sessionOptions(options))
    if (model instanceof Uint8Array) return ort.InferenceSession.create(model, sessionOptions(options))
    const bytes = fs.readFileSync(model.path)
    return ort.InferenceSession.create(bytes, { ...sessionOptions(options), extra: { session: { model_external_initializers_file_folder_path: model.externalDataDir } } })
  }
  return Effect.tryPromise({
    try: create,
    catch: (e) =>
      new SessionError({
        model: name,
        device: describeDevice(device),
        message:
          `cannot create an onnxruntime session for ${name} on ${describeDevice(device)}: ${e instanceof Error ? e.message : String(e)}` +
          (device.kind === "cuda" ? " (`npx pipe doctor` tells what is missing for CUDA; without --gpus stages run on the CPU)" : ""),
      }),
  }).pipe(Effect.map((s) => ({ ort: s, model: name, device })))
}

/** Runs the session; fetches all outputs unless `fetches` names some. */
export const runSession = (
  session: Session,
  feeds: Readonly<Record<string, ort.Tensor>>,
  fetches?: readonly string[],
): Effect.Effect<Record<string, ort.Tensor>, RunError> =>
  Effect.tryPromise({
    try: () => (fetches ? session.ort.run(feeds, fetches) : session.ort.run(feeds)) as Promise<Record<string, ort.Tensor>>,
    catch: (e) => new RunError({ model: session.model, message: `running ${session.model}: ${e instanceof Error ? e.message : String(e)}` }),
  })

export const releaseSession = (session: Session): Effect.Effect<void> => Effect.promise(() => session.ort.release())
