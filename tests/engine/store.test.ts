// The cache directory on its own: claims between runs, temp cleanup after a killed run, gc.
import { existsSync, mkdirSync, renameSync, utimesSync, writeFileSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { beforeEach, describe, expect, it } from "vitest"
import { Store } from "../../src/engine/index.ts"
import { sandbox, type Sandbox } from "./helpers.ts"

let sb: Sandbox
beforeEach(() => {
  sb = sandbox()
})

// A pid that is certainly not running: above the kernel's pid_max default range.
const DEAD_PID = 2 ** 22 + 12345

describe("claims", () => {
  it("block other owners while live; dead or silent owners are taken over", () => {
    const store = new Store(sb.cacheDir)
    expect(store.claim("k1", "run-a")).toEqual({ ok: true })
    expect(store.claim("k1", "run-b")).toEqual({ ok: false, owner: "run-a" })
    store.release("k1", "run-a")
    expect(store.claim("k1", "run-b")).toEqual({ ok: true })

    const put = store.db.prepare("INSERT OR REPLACE INTO claims (key, owner, pid, host, heartbeat_at) VALUES (?, ?, ?, ?, ?)")
    put.run("k2", "killed-run", DEAD_PID, hostname(), Date.now())
    expect(store.claim("k2", "run-b")).toEqual({ ok: true }) // same host, process gone
    put.run("k3", "remote-run", 1, "other-host", Date.now())
    expect(store.claim("k3", "run-b")).toEqual({ ok: false, owner: "remote-run" }) // heartbeat fresh
    put.run("k4", "remote-run", 1, "other-host", Date.now() - 60_000)
    expect(store.claim("k4", "run-b")).toEqual({ ok: true }) // heartbeat stale
    // Our own (live) pid, but recorded with another start time: the pid was reused, the claimer is gone.
    store.db.prepare("INSERT INTO claims (key, owner, pid, host, heartbeat_at, pid_start) VALUES ('k5', 'reused-pid', ?, ?, ?, '1')").run(process.pid, hostname(), Date.now())
    expect(store.claim("k5", "run-b")).toEqual({ ok: true })
    store.close()
  })
})

describe("external inputs", () => {
  it("a directory hashes over relative paths and contents: stable on touch, changed by an edit or a rename", () => {
    const store = new Store(sb.cacheDir)
    const model = join(sb.dir, "model")
    mkdirSync(join(model, "sub"), { recursive: true })
    writeFileSync(join(model, "config.json"), "{}")
    writeFileSync(join(model, "sub", "weights.bin"), "abc")
    const h1 = store.hashExternalDir(model)
    const future = new Date(Date.now() + 60_000)
    utimesSync(join(model, "config.json"), future, future)
    expect(store.hashExternalDir(model)).toBe(h1)
    writeFileSync(join(model, "sub", "weights.bin"), "abd")
    const h2 = store.hashExternalDir(model)
    expect(h2).not.toBe(h1)
    renameSync(join(model, "sub", "weights.bin"), join(model, "sub", "w.bin"))
    expect(store.hashExternalDir(model)).not.toBe(h2)
    expect(() => store.hashExternalDir(join(sb.dir, "nope"))).toThrow(/is not a directory/)
    store.close()
  })
})

describe("temp files and gc", () => {
  it("removes temp files of dead processes at start, keeps those of live ones", () => {
    mkdirSync(join(sb.cacheDir, "tmp"), { recursive: true })
    const dead = join(sb.cacheDir, "tmp", `${DEAD_PID}.1.0`)
    const live = join(sb.cacheDir, "tmp", `${process.pid}.1.0`)
    writeFileSync(dead, "half a payload")
    writeFileSync(live, "being written")
    new Store(sb.cacheDir).close()
    expect(existsSync(dead)).toBe(false)
    expect(existsSync(live)).toBe(true)
  })

  it("gc deletes payloads no cache entry refers to and reports the bytes", () => {
    const store = new Store(sb.cacheDir)
    const kept = store.putBytes(new TextEncoder().encode("kept"))
    store.commit("key", { hash: kept.hash, kind: "file", type: "Text", size: kept.size }, null)
    const orphan = store.putBytes(new TextEncoder().encode("orphan!"))
    const old = new Date(Date.now() - 3_600_000)
    utimesSync(store.objectPath(orphan.hash), old, old)
    utimesSync(store.objectPath(kept.hash), old, old)
    expect(store.gc()).toEqual({ files: 1, workDirs: 0, bytes: 7 })
    expect(existsSync(store.objectPath(kept.hash))).toBe(true)
    expect(existsSync(store.objectPath(orphan.hash))).toBe(false)
    store.close()
  })
})
