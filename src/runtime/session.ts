// onnxruntime-node sessions: created from model bytes or a .onnx path, on the CPU provider
// by default or on CUDA with a device id. A CUDA session that cannot be created fails with
// a SessionError; it never falls back to the CPU silently. Stages acquire sessions in a Scope
// (`scopedSession`, `scopedSessions`) so they are released however the stage ends.
import { Data, Effect, type Scope } from "effect"
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

// Sessions created and not yet released, so tests (and `liveSessions`) can tell that a failed or
// interrupted stage gave its native memory back.
const live = new Set<Session>()

/** The sessions of this process that were created and not released yet. */
export const liveSessions = (): number => live.size

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
  }).pipe(
    Effect.map((s) => {
      const session = { ort: s, model: name, device }
      live.add(session)
      return session
    }),
  )
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

/** Releases the session's native memory; releasing one twice (or one already released) does nothing. */
export const releaseSession = (session: Session): Effect.Effect<void> =>
  Effect.suspend(() => (live.delete(session) ? Effect.promise(() => session.ort.release()) : Effect.void))

/** A session released when the enclosing Scope closes: on success, failure and interruption alike. */
export const scopedSession = (model: Uint8Array | string | GraphFile, options: SessionOptions = {}): Effect.Effect<Session, SessionError, Scope.Scope> =>
  Effect.acquireRelease(createSession(model, options), releaseSession)

const releaseSessions = (...sessions: ReadonlyArray<Session | undefined>): Effect.Effect<void> =>
  Effect.forEach(sessions, (s) => (s === undefined ? Effect.void : releaseSession(s)), { discard: true })

/**
 * Something built around sessions (a generator: its step `session` and decode-loop `loopSession`),
 * its sessions released when the enclosing Scope closes.
 */
export const scopedSessions = <A extends { readonly session: Session; readonly loopSession?: Session | undefined }, E, R>(
  make: Effect.Effect<A, E, R>,
): Effect.Effect<A, E, R | Scope.Scope> => Effect.acquireRelease(make, (a) => releaseSessions(a.session, a.loopSession))
