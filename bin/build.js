// The project's own code (src/**/*.ts) compiled to plain ES modules in dist/, so `pipe` starts
// without a TypeScript loader. One JavaScript file per source file, imports kept as imports (each
// module exists once, as in the sources); `./x.ts` specifiers become `./x.js`.
//
// Never stale: dist/manifest.json records the mtime of every source it was built from (and of this
// file), and `ensureBuilt` (bin/pipe.js) rebuilds when any was added, removed or
// touched. A full build takes well under a second. `node bin/build.js` builds unconditionally.
//
// Compiled code sees its source location: `import.meta.url`, `.dirname` and `.filename` are
// replaced by the source file's, so code that locates itself (the engine's own directory in
// source.ts, child.ts next to executor.ts) behaves exactly as when run from the sources.
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs"
import { dirname, join, relative } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
export const srcDir = join(root, "src")
export const distDir = join(root, "dist")
const manifestFile = join(distDir, "manifest.json")

const self = fileURLToPath(import.meta.url)

/** Every .ts file under src/ with its mtime, keyed by its path relative to the repository, and this file (how they are compiled). */
const sources = () => {
  const files = { [relative(root, self)]: statSync(self).mtimeMs }
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith(".ts")) files[relative(root, p)] = statSync(p).mtimeMs
    }
  }
  walk(srcDir)
  return files
}

const readManifest = () => {
  try {
    return JSON.parse(readFileSync(manifestFile, "utf8"))
  } catch {
    return undefined // no build yet, or a build that was interrupted before its manifest
  }
}

// The compiled code holds the sources' absolute paths (see above): a moved checkout is rebuilt too.
const upToDate = (manifest, files) => {
  if (manifest?.root !== root) return false
  const keys = Object.keys(files)
  return keys.length === Object.keys(manifest.files).length && keys.every((k) => manifest.files[k] === files[k])
}

// Several `pipe` processes may build at once (tests, concurrent runs): each file is written under a
// temporary name and renamed, so a reader sees an old or a new file, never a partial one. Builds of
// the same sources write the same bytes.
const writeAtomic = (file, contents) => {
  mkdirSync(dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, contents)
  renameSync(tmp, file)
}

/** Compiles src/ into dist/ and records the sources' mtimes (taken before compiling, so an edit made during the build triggers the next one). */
const build = async () => {
  const files = sources()
  const esbuild = await import("esbuild")
  const location = {
    name: "source-location",
    setup(b) {
      // Each module declares its own location before any of its code (the `define`s below read these names).
      b.onLoad({ filter: /\.ts$/ }, (a) => {
        const url = pathToFileURL(a.path).href
        const header = `var __pipe_url=${JSON.stringify(url)},__pipe_filename=${JSON.stringify(a.path)},__pipe_dirname=${JSON.stringify(dirname(a.path))};`
        return { contents: header + readFileSync(a.path, "utf8"), loader: "ts" }
      })
      // Bundling only to rewrite specifiers: every relative import stays an import of its own compiled file.
      b.onResolve({ filter: /^\.\.?\// }, (a) => (a.kind === "entry-point" ? undefined : { path: a.path.replace(/\.ts$/, ".js"), external: true }))
    },
  }
  const result = await esbuild.build({
    entryPoints: Object.keys(files).filter((f) => f.endsWith(".ts")).map((f) => join(root, f)),
    outdir: join(distDir, "src"),
    outbase: srcDir,
    bundle: true,
    packages: "external",
    format: "esm",
    platform: "node",
    target: "node20",
    // Stack traces point into dist/; `node --enable-source-maps` maps them back to src/ (not on by
    // default: Node would then read the source maps of every module it loads, effect's included).
    sourcemap: "linked",
    sourcesContent: false,
    write: false,
    logLevel: "silent",
    define: { "import.meta.url": "__pipe_url", "import.meta.filename": "__pipe_filename", "import.meta.dirname": "__pipe_dirname" },
    plugins: [location],
  })
  for (const f of result.outputFiles) writeAtomic(f.path, f.contents)
  writeAtomic(manifestFile, JSON.stringify({ root, files }, null, 1))
}

/**
 * Rebuilds dist/ when a source changed since it was built. Returns false, with the reason on stderr,
 * when it cannot (a syntax error, a read-only checkout): the caller then runs from source.
 */
export const ensureBuilt = async () => {
  if (upToDate(readManifest(), sources())) return true
  try {
    await build()
    return true
  } catch (e) {
    // esbuild lists each error with its place in the sources; anything else (an unwritable checkout) has a message.
    const why = e.errors?.map((m) => `${m.location ? `${m.location.file}:${m.location.line}:${m.location.column}: ` : ""}${m.text}`).join("; ") ?? e.message
    process.stderr.write(`pipe: could not build dist/ (running the sources through tsx instead): ${why}\n`)
    return false
  }
}

if (process.argv[1] === self) await build()
