// The `pipe` command: a dispatcher over one module per command (src/cli/<command>.ts), each imported
// only when it runs, so a command loads only the code it uses: `pipe --help` no engine at all, `pipe ls`
// the store but no TypeScript loader, no onnxruntime. Adding a command: a module exporting `command`
// (see args.ts) and one entry in COMMANDS.
// Exit codes: 0 ok, 1 some node failed, 2 bad usage / pipeline / params, 130 interrupted.
import { out, parseArgs, UsageError, type Cli, type Command } from "./args.ts"

interface Entry {
  /** Its lines in `pipe --help`. */
  readonly usage: string
  readonly load: () => Promise<{ readonly command: Command }>
}

const COMMANDS: Readonly<Record<string, Entry>> = {
  run: {
    usage: `run <pipeline.ts>     plan and run a pipeline, reusing cached results
      --set name.param=value   override a param of every node of that call (repeatable; value is JSON or a string)
      --set name.param='sweep([v1, v2])'  sweep that param from the command line (one instance per value)
      --set name.path=PATH     replace the path of the external input declared with { name } (model, dataset)
      --dry-run                list every node as cached / to run / pending, and why; run nothing
      --rerun <name>           recompute nodes of this call or stage even when cached (repeatable)
      --jobs N                 CPU job slots (default 1)
      --gpus 0,1|none          GPUs to use (default: detected with nvidia-smi)
      --gpu-slots N            GPU stages that may share one GPU at a time (default 1)
      --memory MB              memory budget for the stages' memory hints (default 80% of RAM)
      --fail-fast              stop at the first failure
      --plain                  plain log lines instead of progress bars
      --executor local|slurm   slurm: each node is an sbatch job (cache and project on a shared filesystem);
                               --jobs then bounds the jobs queued at once (default 64)
      --slurm-partition P, --slurm-account A, --slurm-qos Q, --slurm-time T, --slurm-constraint C
      --slurm-option OPT       any further sbatch option, e.g. --slurm-option=--exclusive (repeatable)
      --slurm-retries N        resubmissions of a job that ends without a result: timeout, preemption, crash (default 2)
      --slurm-all              in-process stages go to Slurm too (default: they run in the coordinator)
      --slurm-no-arrays        one job per node instead of one job array per stage dispatched together
      --slurm-no-gpus          GPU stages ask for no --gres=gpu:1 (a CPU-only partition)`,
    load: () => import("./run.ts"),
  },
  status: { usage: "status <pipeline.ts>  what is cached, what would run, stages whose source changed (takes --set, --rerun)", load: () => import("./status.ts") },
  ls: { usage: "ls [--limit N]        recent runs", load: () => import("./ls.ts") },
  show: { usage: "show <run|node>       a run's nodes, or a node's latest execution (node: display name or key prefix)", load: () => import("./show.ts") },
  logs: { usage: "logs <node>           the log of a node's latest execution", load: () => import("./logs.ts") },
  why: { usage: "why <node>            what changed in a node's key since its previous execution", load: () => import("./why.ts") },
  table: {
    usage: "table <run|pipeline.ts> [node]  a sweep as a table: coordinates x values and metrics [--columns a,b] [--sort -a,b] [--format md|csv|json] [--set ...]",
    load: () => import("./table.ts"),
  },
  serve: {
    usage: `serve                 the dashboard: runs, live DAGs, logs, metric charts, published results, comparisons
      --host H                 address to listen on (default 127.0.0.1: this machine only)
      --port P                 port (default 8765; 0 for any free one)`,
    load: () => import("./serve.ts"),
  },
  export: { usage: "export <node> <dir>   write a training node's adapter as a PEFT directory (adapter_config.json + adapter_model.safetensors)", load: () => import("./export.ts") },
  "serve-model": {
    usage: `serve-model <model-dir>  an OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models) over a local model
      --host H                 address to bind (default 127.0.0.1: the server has no authentication)
      --port N                 port (default 8000; 0 for any free one)
      --name NAME              the model id clients name (default the directory's name)
      --threads N              onnxruntime intra-op threads`,
    load: () => import("./serve-model.ts"),
  },
  gc: { usage: "gc                    delete payloads no cache entry refers to, and work directories of interrupted nodes", load: () => import("./gc.ts") },
  doctor: {
    usage: `doctor                execution providers, GPUs, library versions, and what is missing for CUDA
      --cache                  instead: check the cache database, move a damaged one aside, rebuild its entries`,
    load: () => import("./doctor.ts"),
  },
}

const USAGE = `usage: pipe <command> [options]

commands:
${Object.values(COMMANDS)
  .map((c) => `  ${c.usage}`)
  .join("\n")}

common options:
  --cache-dir DIR       cache directory (default $PIPE_CACHE_DIR or ./cache)
  --runs-dir DIR        runs directory (default $PIPE_RUNS_DIR or ./runs)
`

export const main = async (argv: ReadonlyArray<string>, cli: Cli): Promise<number> => {
  const [name = "--help", ...rest] = argv
  try {
    if (name === "--help" || name === "help" || rest.includes("--help")) {
      out(USAGE)
      return 0
    }
    const entry = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined
    if (entry === undefined) throw new UsageError(`unknown command "${name}"`)
    const { command } = await entry.load()
    return await command.run(parseArgs(name, rest, command), cli)
  } catch (e) {
    const { errorMessage, isDamagedDatabase } = await import("../engine/errors.ts")
    // A database found damaged after it opened (a corrupt page read later) gets the same way out as at open.
    process.stderr.write(`pipe: ${errorMessage(e)}\n${e instanceof UsageError ? "run pipe --help for usage\n" : isDamagedDatabase(e) ? "the cache database is damaged: run pipe doctor --cache\n" : ""}`)
    return 2
  }
}

// Run directly through tsx (`npx tsx src/cli/main.ts ...`), pipeline files are importable already.
if (process.argv[1] === import.meta.filename) process.exitCode = await main(process.argv.slice(2), { loadTypeScript: async () => {} })
