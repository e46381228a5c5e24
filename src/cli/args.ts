// Command-line parsing for `pipe`: a small explicit parser. Each command module declares the flags and
// the options (which take a value) it accepts; --cache-dir and --runs-dir are accepted by all.
// `--name=value` works for every option; `--set` may repeat, as may --rerun.

/** Bad usage: reported with a hint to `pipe --help`, exit code 2. */
export class UsageError extends Error {}

export interface Args {
  readonly command: string
  readonly positional: ReadonlyArray<string>
  readonly flags: ReadonlySet<string>
  readonly options: ReadonlyMap<string, ReadonlyArray<string>>
}

/** What the dispatcher gives a command besides its arguments. */
export interface Cli {
  /** Makes TypeScript pipeline files importable (once); call before planning a pipeline. */
  readonly loadTypeScript: () => Promise<void>
}

/** A `pipe` subcommand: one module under src/cli/ exporting it as `command`. */
export interface Command {
  readonly flags?: ReadonlyArray<string>
  readonly options?: ReadonlyArray<string>
  /** Returns the exit code: 0 ok, 1 some node failed, 2 bad usage / pipeline / params, 130 interrupted. */
  readonly run: (args: Args, cli: Cli) => number | Promise<number>
}

const COMMON_OPTIONS = ["--cache-dir", "--runs-dir"]

export const parseArgs = (command: string, rest: ReadonlyArray<string>, spec: Command): Args => {
  const flags = new Set(spec.flags)
  const options = new Set([...(spec.options ?? []), ...COMMON_OPTIONS])
  const positional: Array<string> = []
  const seenFlags = new Set<string>()
  const values = new Map<string, Array<string>>()
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]
    const eq = a.startsWith("--") ? a.indexOf("=") : -1
    const [name, inline] = eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined]
    if (flags.has(name) && inline === undefined) seenFlags.add(name)
    else if (options.has(name)) {
      const value = inline ?? rest[++i]
      if (value === undefined) throw new UsageError(`${name} needs a value`)
      values.set(name, [...(values.get(name) ?? []), value])
    } else if (a.startsWith("-")) throw new UsageError(`unknown option ${a} for pipe ${command}`)
    else positional.push(a)
  }
  return { command, positional, flags: seenFlags, options: values }
}

/** The last value given for an option. */
export const one = (args: Args, name: string): string | undefined => args.options.get(name)?.at(-1)

export const int = (args: Args, name: string, fallback: number): number => {
  const v = one(args, name)
  if (v === undefined) return fallback
  if (!/^\d+$/.test(v) || Number(v) < 1) throw new UsageError(`${name} expects a positive integer, got ${v}`)
  return Number(v)
}

export const needOne = (args: Args, what: string): string => {
  if (args.positional.length !== 1) throw new UsageError(`pipe ${args.command} expects ${what}`)
  return args.positional[0]
}

export const out = (line = "") => process.stdout.write(line + "\n")
