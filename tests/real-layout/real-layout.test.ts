// Checkpoints laid out exactly like their Hugging Face repositories (families.ts, written by
// fixture.ts at test time), each taken through what a user does with one:
// 1. it loads: published config.json, real tensor names with the buffers the files carry, shards
//    and index, the tokenizer at its real vocabulary size with its special tokens at their ids;
// 2. its chat template renders the conversation as transformers' apply_chat_template does (the
//    expected strings are written by hand from the templates), or, for base models, asking for
//    one fails with a message that says the model has none;
// 3. the ONNX forward pass matches the float64 reference (tests/reference/reference.ts) on that
//    prompt. Tolerance 1e-4 x max(1, max |logit|): both read the same stored bf16/fp16/fp32
//    values exactly, so what differs is float32 rounding, ~1e-7 relative per operation, summed
//    over dot products of at most a few hundred terms and a few layers (~1e-5 relative), with ten
//    times that as margin;
// 4. greedy generation with the KV cache gives, at every step, the argmax of a full recompute
//    of the whole sequence, and its log-probabilities;
// 5. one LoRA step (all linear layers, B = 0 at the start) has the base model's cross-entropy,
//    checked against the reference, and the next step's loss is lower;
// 6. the adapter written as PEFT has exactly the keys PEFT's get_peft_model_state_dict gives for
//    that architecture, listed by hand in families.ts.
import { Effect } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import type * as ort from "onnxruntime-node"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Graph } from "../../src/graph/index.ts"
import { crossEntropy } from "../../src/graph/losses.ts"
import { buildTrainStep } from "../../src/graph/optim.ts"
import { initLora, loraAdapter, loraFromParams, loraHook, loraParamSpecs } from "../../src/models/adapters.ts"
import { type Checkpoint, loadCheckpoint } from "../../src/models/checkpoint.ts"
import { allWeightRefs, decoder, forwardNames } from "../../src/models/forward.ts"
import { makeGenerator } from "../../src/models/generate.ts"
import { externalWeights, placeWeights, writeGraph } from "../../src/models/graph-weights.ts"
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, type LoraConfig, loraConfigFor, loraScale, type LoraTarget, loraTargets, writeAdapter } from "../../src/models/peft.ts"
import { readHeader } from "../../src/core/safetensors.ts"
import { createSession, type Session } from "../../src/runtime/session.ts"
import { tensor } from "../../src/runtime/tensor.ts"
import { initTrainState, type TrainState, trainStep } from "../../src/runtime/train.ts"
import { applyChatTemplate, chatPromptIds } from "../../src/text/chat-template.ts"
import { loadTokenizer, type TextTokenizer } from "../../src/text/tokenizer.ts"
import { expectClose, forwardSession, ids, rowsOf, run, tempDir } from "../models/forward-helpers.ts"
import { referenceLogits } from "../reference/reference.ts"
import { families } from "./families.ts"
import { fixtureConfig, writeFixture } from "./fixture.ts"

const TIMEOUT = 60_000
const RANK = 4
const NEW_TOKENS = 5
const TRAIN_TOKENS = 12

const logitTolerance = (want: ReadonlyArray<Float64Array>) => 1e-4 * Math.max(1, ...want.map((row) => row.reduce((m, x) => Math.max(m, Math.abs(x)), 0)))

const logSoftmax = (z: ArrayLike<number>, i: number) => {
  let m = -Infinity
  for (let j = 0; j < z.length; j++) m = Math.max(m, z[j])
  let s = 0
  for (let j = 0; j < z.length; j++) s += Math.exp(z[j] - m)
  return z[i] - m - Math.log(s)
}

/** The best and second-best entries of a row. */
const top2 = (z: ArrayLike<number>) => {
  let best = 0
  let second = -Infinity
  for (let j = 1; j < z.length; j++)
    if (z[j] > z[best]) {
      second = z[best]
      best = j
    } else if (z[j] > second) second = z[j]
  return { best, gap: z[best] - second }
}

/** A train-step session: next-token cross-entropy of the base model + LoRA on `targets`. */
const loraTrainSession = (ckpt: Checkpoint, targets: ReadonlyArray<LoraTarget>, scale: number, graphDir: string) =>
  Effect.runPromise(
    Effect.gen(function* () {
      const placement = yield* placeWeights(ckpt, graphDir)
      const g = new Graph("real_layout_lora")
      const source = externalWeights(g, placement)
      const H = ckpt.config.hiddenSize
      buildTrainStep({
        graph: g,
        params: loraParamSpecs(targets, RANK),
        batch: {
          input_ids: { dtype: "int64", shape: ["batch", "seq"] },
          attention_mask: { dtype: "int64", shape: ["batch", "seq"] },
          targets: { dtype: "int64", shape: ["batch", "seq"] },
        },
        adamw: { weightDecay: 0 },
        loss: (sub, params, b) => {
          const out = decoder(sub, ckpt.config, ckpt.weights, source, { ids: b.input_ids, mask: b.attention_mask }, { linearHook: loraHook(loraFromParams(targets, params), scale) })
          return crossEntropy(sub, { hidden: sub.reshape(out.hidden, [-1, H]), weight: out.lmHead, softcap: out.logitSoftcap }, sub.reshape(b.targets, [-1])).mean
        },
      })
      return yield* createSession(yield* writeGraph(g, placement, "real_layout_lora"))
    }),
  )

const dirs: string[] = []
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })))

const orThrow = <A, E extends { readonly message: string }>(e: Effect.Effect<A, E>): Promise<A> => Effect.runPromise(Effect.mapError(e, (x) => new Error(x.message)))

for (const family of families) {
  describe(family.name, () => {
    // the model directory and the graph directories (their weights are hard links into it)
    const root = tempDir("pipe-real-layout-")
    dirs.push(root)
    const dir = path.join(root, "model")
    const config = fixtureConfig(family)
    let files: ReadonlyArray<string> = []
    // Loaded once each; a failure is reported by every test that needs what failed to load.
    let checkpoint: Promise<Checkpoint> | undefined
    let tokenizer: Promise<TextTokenizer> | undefined
    const ckptOf = () => (checkpoint ??= orThrow(loadCheckpoint(dir)))
    const tokOf = () => (tokenizer ??= orThrow(loadTokenizer(dir)))
    const prompt = async (): Promise<number[]> => {
      const tok = await tokOf()
      return family.chat ? orThrow(chatPromptIds(tok, family.chat.messages, { addGenerationPrompt: true })) : tok.encode(family.text ?? "")
    }
    let reference: Float64Array[] | undefined
    let session: Promise<Session> | undefined
    const logitsOf = async (seq: ReadonlyArray<number>, from = 0) => {
      session ??= forwardSession(await ckptOf())
      const feeds = { [forwardNames.ids]: ids([[...seq]]), [forwardNames.mask]: tensor("int64", [1, seq.length], Array(seq.length).fill(1)) }
      return rowsOf((await run(await session, feeds)).logits, 0, from)
    }
    let trained: { state: TrainState; targets: ReadonlyArray<LoraTarget>; config: LoraConfig } | undefined

    beforeAll(async () => {
      files = await writeFixture(family, dir)
    }, TIMEOUT)

    it(
      "loads its published config, tensor names and buffers, shards and tokenizer",
      async () => {
        const index = path.join(dir, "model.safetensors.index.json")
        expect(fs.existsSync(index)).toBe(family.shards > 1)
        if (family.shards > 1) expect(files.length).toBeGreaterThan(1)
        const ckpt = await ckptOf()
        const tok = await tokOf()
        expect(ckpt.config.hfArchitecture).toBe((family.config.architectures as string[])[0])
        expect(ckpt.config.vocabSize).toBe(config.vocab_size)
        expect(ckpt.config.numLayers).toBe(config.num_hidden_layers ?? config.n_layer)
        expect([...ckpt.tensorFiles].sort()).toEqual([...files].sort())
        const stored = new Set<string>()
        for (const f of files) for (const name of (await orThrow(readHeader(f))).tensors.keys()) stored.add(name)
        expect([...stored].sort()).toEqual(family.tensors(config).map((t) => t.name).sort())
        // the model uses every published weight and none of the buffers stored beside them
        const weights = family.tensors(config).filter((t) => t.role !== "buffer").map((t) => t.name)
        expect([...new Set(allWeightRefs(ckpt.weights).map((w) => w.name))].sort()).toEqual(weights.sort())
        expect(tok.vocabSize).toBe(family.tokenizer.size)
        for (const s of family.tokenizer.specials) expect(tok.tokenToId(s.content)).toBe(s.id)
        expect({ bos: tok.bos?.token, eos: tok.eos?.token, unk: tok.unk?.token, pad: tok.pad?.token }).toEqual({ bos: undefined, eos: undefined, unk: undefined, pad: undefined, ...family.tokenizer.resolved })
      },
      TIMEOUT,
    )

    it(
      family.chat ? "renders its published chat template as transformers does" : "has no chat template, and says so",
      async () => {
        const tok = await tokOf()
        if (family.chat) {
          const rendered = family.chat.rendered()
          expect(await orThrow(applyChatTemplate(tok, family.chat.messages, { addGenerationPrompt: true }))).toBe(rendered)
          // the special-token strings are single tokens in the prompt ids
          const ids = await prompt()
          for (const s of family.tokenizer.specials.filter((x) => rendered.includes(x.content))) expect(ids).toContain(s.id)
        } else {
          const error = await Effect.runPromise(Effect.flip(applyChatTemplate(tok, [{ role: "user", content: "hi" }], { addGenerationPrompt: true })))
          expect(error.message).toMatch(/tokenizer_config\.json: chat_template: missing \(this model has no chat template/)
        }
      },
      TIMEOUT,
    )

    it(
      "matches the float64 reference",
      async () => {
        const seq = await prompt()
        reference = referenceLogits(dir, seq)
        expectClose(await logitsOf(seq), reference, logitTolerance(reference))
      },
      TIMEOUT,
    )

    it(
      "generates with the KV cache what a full recompute gives",
      async () => {
        const seq = await prompt()
        const generator = await orThrow(makeGenerator(await ckptOf(), { graphDir: path.join(root, "generate"), tokenizer: await tokOf() }))
        const [gen] = await orThrow(generator.generate([{ prompt: seq, maxNewTokens: NEW_TOKENS, temperature: 0 }]))
        expect(gen.tokens.length).toBeGreaterThan(0)
        expect(typeof gen.text).toBe("string")
        const logits = await logitsOf([...seq, ...gen.tokens.slice(0, -1)], seq.length - 1)
        gen.tokens.forEach((token, i) => {
          const { best, gap } = top2(logits[i])
          // a near tie can go either way in float32; the rest of the sequence then differs legitimately
          if (gap > 1e-3) expect(token).toBe(best)
          expect(Math.abs(gen.logProbs[i] - logSoftmax(logits[i], token))).toBeLessThan(1e-3)
        })
      },
      TIMEOUT,
    )

    it(
      "trains a LoRA step on every linear layer that starts at the base loss and lowers it",
      async () => {
        const ckpt = await ckptOf()
        // the prompt's first tokens: the step's cost is mostly the T x vocabulary cross-entropy
        const seq = (await prompt()).slice(0, TRAIN_TOKENS)
        const targets = await orThrow(loraTargets(ckpt, family.loraTargets))
        const lc = await orThrow(loraConfigFor(ckpt, { r: RANK, loraAlpha: 2 * RANK, targetModules: family.loraTargets }))
        const session = await loraTrainSession(ckpt, targets, loraScale(lc), path.join(root, "train"))
        const batch: Record<string, ort.Tensor> = {
          input_ids: ids([seq.slice(0, -1)]),
          attention_mask: tensor("int64", [1, seq.length - 1], Array(seq.length - 1).fill(1)),
          targets: ids([seq.slice(1)]),
        }
        const init = initLora(targets, RANK, 3)
        const first = await orThrow(trainStep(session, initTrainState(Object.fromEntries(Object.entries(init).map(([k, v]) => [k, tensor("float32", v.shape, v.data)]))), batch, 0.01))
        // B = 0: the loss of the first step is the base model's, here from the float64 reference
        // (the reference is causal: its first rows on the whole prompt are those of the shorter sequence)
        const want = (reference ?? referenceLogits(dir, seq)).slice(0, seq.length - 1).reduce((s, z, t) => s - logSoftmax(z, seq[t + 1]), 0) / (seq.length - 1)
        expect(Math.abs(first.loss - want)).toBeLessThan(1e-4 * Math.max(1, want))
        const second = await orThrow(trainStep(session, first.state, batch, 0.01))
        expect(second.loss).toBeLessThan(first.loss)
        trained = { state: second.state, targets, config: lc }
      },
      TIMEOUT,
    )

    it(
      "writes a PEFT adapter with the keys get_peft_model_state_dict gives",
      async () => {
        if (trained === undefined) throw new Error("no adapter: the LoRA training test did not finish")
        const values = Object.fromEntries(Object.entries(trained.state.params).map(([k, t]) => [k, t.data as Float32Array]))
        const out = path.join(root, "adapter")
        await orThrow(writeAdapter(out, loraAdapter(trained.config, trained.targets, values)))
        const layers = (config.num_hidden_layers ?? config.n_layer) as number
        const want = Array.from({ length: layers }, (_, i) => family.peftModules(i))
          .flat()
          .flatMap((m) => [`base_model.model.${m}.lora_A.weight`, `base_model.model.${m}.lora_B.weight`])
        const header = await orThrow(readHeader(path.join(out, ADAPTER_WEIGHTS)))
        expect([...header.tensors.keys()].sort()).toEqual(want.sort())
        for (const t of header.tensors.values()) expect(t.shape[t.name.includes("lora_A") ? 0 : 1]).toBe(RANK)
        const adapterConfig = JSON.parse(fs.readFileSync(path.join(out, ADAPTER_CONFIG), "utf8")) as Record<string, unknown>
        expect(adapterConfig.peft_type).toBe("LORA")
        expect(adapterConfig.target_modules).toEqual(family.loraTargets)
        // GPT-2's Conv1D stores W^T; PEFT must be told so
        expect(adapterConfig.fan_in_fan_out).toBe(family.config.model_type === "gpt2")
      },
      TIMEOUT,
    )
  })
}
