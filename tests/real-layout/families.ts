// The checkpoints of the "real layout" suite, as their Hugging Face repositories publish them:
// config.json with every published field (only the sizes in `sizes` replaced), the tensor names
// of their safetensors files including the buffers those files carry, the storage dtype, the
// shard count, generation_config.json, tokenizer_config.json with the published chat template
// (chat-templates.json) and the special tokens at their real ids. What LoRA adapts and which keys
// PEFT's get_peft_model_state_dict writes are written out by hand from PEFT's and transformers'
// module naming, not derived from the code under test.
//
// chat-templates.json holds each repository's tokenizer_config.json chat_template string as
// published (JSON-escaped as in that file); Llama 3.2's calls strftime_now, so its rendering
// carries today's date, as in transformers.
//
// Kept real: vocab_size (every embedding and lm_head has the published row count), max positions,
// RoPE bases and scalings, eps, soft-capping values, windows, token ids. Shrunk: hidden_size,
// intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim (and
// GPT-2's n_embd/n_layer/n_head/n_inner, which are the same sizes under GPT-2's names).
import type { ChatMessage } from "../../src/text/chat-template.ts"
import templates from "./chat-templates.json" with { type: "json" }

export type StorageDType = "BF16" | "F16" | "F32"
export type Config = Readonly<Record<string, unknown>>
/** A numeric field of a config.json (the layouts below only read fields the families publish). */
const num = (c: Config, key: string): number => c[key] as number

/** One tensor of a checkpoint file. Buffers carry fixed values (a causal mask, inv_freq, ...). */
export interface TensorEntry {
  readonly name: string
  readonly shape: ReadonlyArray<number>
  readonly role: "weight" | "bias" | "norm" | "buffer"
  /** For buffers: dtype and values as the published files store them. */
  readonly buffer?: { readonly dtype: "F32" | "BOOL"; readonly values: (n: number) => Float32Array | Uint8Array }
}

export interface SpecialToken {
  readonly id: number
  readonly content: string
  /** false for added tokens transformers does not treat as special (Qwen's <tool_call>, ...). */
  readonly special?: boolean
}

export interface Family {
  /** Test label. */
  readonly name: string
  /** The Hugging Face repository whose files are reproduced. */
  readonly repo: string
  readonly config: Readonly<Record<string, unknown>>
  readonly sizes: Readonly<Record<string, number>>
  readonly dtype: StorageDType
  /** Safetensors files of the real repository (1: a single model.safetensors, no index). */
  readonly shards: number
  /** The tensors of the shrunk config.json. */
  readonly tensors: (config: Config) => ReadonlyArray<TensorEntry>
  /** Norm scales are stored as w with scale 1 + w (Gemma) rather than as the scale itself. */
  readonly normStoredAsOffset?: boolean
  readonly generationConfig: Readonly<Record<string, unknown>>
  readonly tokenizer: {
    /** Tokens in tokenizer.json (regular + added), as published. */
    readonly size: number
    readonly specials: ReadonlyArray<SpecialToken>
    /** The bos the tokenizer.json post-processor prepends, if it does. */
    readonly postProcessorBos?: string
    /** tokenizer_config.json without chat_template and added_tokens_decoder (added here). */
    readonly config: Readonly<Record<string, unknown>>
    /** The special tokens transformers' tokenizer class ends up with (its defaults where the file is silent). */
    readonly resolved: { readonly bos?: string; readonly eos?: string; readonly unk?: string; readonly pad?: string }
  }
  /** Chat models: the conversation and its rendering as transformers' apply_chat_template gives it. */
  readonly chat?: { readonly messages: ReadonlyArray<ChatMessage>; readonly rendered: () => string }
  /** Base models: a plain text prompt. */
  readonly text?: string
  readonly loraTargets: ReadonlyArray<string>
  /** PEFT module paths of layer i (keys are base_model.model.<path>.lora_{A,B}.weight). */
  readonly peftModules: (layer: number) => ReadonlyArray<string>
}

const templateOf = (repo: keyof typeof templates) => templates[repo]

const system = "You are a concise assistant."
const question = "What colour is the sky?"
const withSystem: ReadonlyArray<ChatMessage> = [
  { role: "system", content: system },
  { role: "user", content: question },
]

// ------------------------------------------------------------------------------ tensor layouts

type Entries = TensorEntry[]
const w = (name: string, ...shape: number[]): TensorEntry => ({ name, shape, role: "weight" })
const b = (name: string, n: number): TensorEntry => ({ name, shape: [n], role: "bias" })
const norm = (name: string, n: number): TensorEntry => ({ name, shape: [n], role: "norm" })
const range = (n: number) => Array.from({ length: n }, (_, i) => i)

/** A lower-triangular causal mask [1, 1, n, n] as GPT-2 and GPT-NeoX register it. */
const causalMask = (name: string, n: number, dtype: "F32" | "BOOL"): TensorEntry => ({
  name,
  shape: [1, 1, n, n],
  role: "buffer",
  buffer: {
    dtype,
    values: (count) => {
      const out = dtype === "BOOL" ? new Uint8Array(count) : new Float32Array(count)
      for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) out[i * n + j] = 1
      return out
    },
  },
})
const scalar = (name: string, value: number): TensorEntry => ({ name, shape: [], role: "buffer", buffer: { dtype: "F32", values: () => Float32Array.of(value) } })

/** model.layers.N.* of LlamaForCausalLM and the families that copy its naming. */
const llamaLayout =
  (extra: { qkvBias?: boolean; qkNorm?: boolean; gemmaNorms?: boolean; /** Gemma: tied unless the config says otherwise. */ tied?: boolean } = {}) =>
  (c: Config): Entries => {
    const h = num(c, "hidden_size")
    const d = num(c, "head_dim") ?? h / num(c, "num_attention_heads")
    const q = num(c, "num_attention_heads") * d
    const kv = num(c, "num_key_value_heads") * d
    const m = num(c, "intermediate_size")
    const layers = range(num(c, "num_hidden_layers")).flatMap((i): Entries => {
      const p = `model.layers.${i}`
      return [
        norm(`${p}.input_layernorm.weight`, h),
        w(`${p}.self_attn.q_proj.weight`, q, h),
        w(`${p}.self_attn.k_proj.weight`, kv, h),
        w(`${p}.self_attn.v_proj.weight`, kv, h),
        ...(extra.qkvBias ? [b(`${p}.self_attn.q_proj.bias`, q), b(`${p}.self_attn.k_proj.bias`, kv), b(`${p}.self_attn.v_proj.bias`, kv)] : []),
        ...(extra.qkNorm ? [norm(`${p}.self_attn.q_norm.weight`, d), norm(`${p}.self_attn.k_norm.weight`, d)] : []),
        w(`${p}.self_attn.o_proj.weight`, h, q),
        norm(`${p}.post_attention_layernorm.weight`, h),
        ...(extra.gemmaNorms ? [norm(`${p}.pre_feedforward_layernorm.weight`, h), norm(`${p}.post_feedforward_layernorm.weight`, h)] : []),
        w(`${p}.mlp.gate_proj.weight`, m, h),
        w(`${p}.mlp.up_proj.weight`, m, h),
        w(`${p}.mlp.down_proj.weight`, h, m),
      ]
    })
    const tied = extra.tied ?? c.tie_word_embeddings === true
    const v = num(c, "vocab_size")
    return [w("model.embed_tokens.weight", v, h), ...layers, norm("model.norm.weight", h), ...(tied ? [] : [w("lm_head.weight", v, h)])]
  }

const phi3Layout = (c: Config): Entries => {
  const h = num(c, "hidden_size")
  const d = h / num(c, "num_attention_heads")
  const qkv = (num(c, "num_attention_heads") + 2 * num(c, "num_key_value_heads")) * d
  const m = num(c, "intermediate_size")
  const layers = range(num(c, "num_hidden_layers")).flatMap((i): Entries => {
    const p = `model.layers.${i}`
    return [
      norm(`${p}.input_layernorm.weight`, h),
      w(`${p}.self_attn.qkv_proj.weight`, qkv, h),
      w(`${p}.self_attn.o_proj.weight`, h, h),
      norm(`${p}.post_attention_layernorm.weight`, h),
      w(`${p}.mlp.gate_up_proj.weight`, 2 * m, h),
      w(`${p}.mlp.down_proj.weight`, h, m),
    ]
  })
  const v = num(c, "vocab_size")
  return [w("model.embed_tokens.weight", v, h), ...layers, norm("model.norm.weight", h), w("lm_head.weight", v, h)]
}

/** GPT-2's Conv1D layout ([in, out] weights); `prefix` "" for openai-community/gpt2, "transformer." otherwise. */
const gpt2Layout =
  (prefix: string, buffers: (p: string, n: number) => Entries) =>
  (c: Config): Entries => {
    const h = num(c, "n_embd")
    const m = num(c, "n_inner") ?? 4 * h
    const n = num(c, "n_positions")
    const layers = range(num(c, "n_layer")).flatMap((i): Entries => {
      const p = `${prefix}h.${i}`
      return [
        norm(`${p}.ln_1.weight`, h),
        b(`${p}.ln_1.bias`, h),
        ...buffers(`${p}.attn`, n),
        w(`${p}.attn.c_attn.weight`, h, 3 * h),
        b(`${p}.attn.c_attn.bias`, 3 * h),
        w(`${p}.attn.c_proj.weight`, h, h),
        b(`${p}.attn.c_proj.bias`, h),
        norm(`${p}.ln_2.weight`, h),
        b(`${p}.ln_2.bias`, h),
        w(`${p}.mlp.c_fc.weight`, h, m),
        b(`${p}.mlp.c_fc.bias`, m),
        w(`${p}.mlp.c_proj.weight`, m, h),
        b(`${p}.mlp.c_proj.bias`, h),
      ]
    })
    return [w(`${prefix}wte.weight`, num(c, "vocab_size"), h), w(`${prefix}wpe.weight`, n, h), ...layers, norm(`${prefix}ln_f.weight`, h), b(`${prefix}ln_f.bias`, h)]
  }

const neoxLayout = (c: Config): Entries => {
  const h = num(c, "hidden_size")
  const m = num(c, "intermediate_size")
  const headDim = h / num(c, "num_attention_heads")
  const rotary = Math.floor(headDim * num(c, "rotary_pct"))
  // inv_freq as GPTNeoXRotaryEmbedding registers it: 1 / base^(2i / rotary_ndims)
  const invFreq = Float32Array.from(range(rotary / 2), (i) => 1 / num(c, "rotary_emb_base") ** ((2 * i) / rotary))
  const layers = range(num(c, "num_hidden_layers")).flatMap((i): Entries => {
    const p = `gpt_neox.layers.${i}`
    return [
      norm(`${p}.input_layernorm.weight`, h),
      b(`${p}.input_layernorm.bias`, h),
      norm(`${p}.post_attention_layernorm.weight`, h),
      b(`${p}.post_attention_layernorm.bias`, h),
      causalMask(`${p}.attention.bias`, num(c, "max_position_embeddings"), "BOOL"),
      scalar(`${p}.attention.masked_bias`, -1e9),
      { name: `${p}.attention.rotary_emb.inv_freq`, shape: [rotary / 2], role: "buffer", buffer: { dtype: "F32", values: () => invFreq } },
      w(`${p}.attention.query_key_value.weight`, 3 * h, h),
      b(`${p}.attention.query_key_value.bias`, 3 * h),
      w(`${p}.attention.dense.weight`, h, h),
      b(`${p}.attention.dense.bias`, h),
      w(`${p}.mlp.dense_h_to_4h.weight`, m, h),
      b(`${p}.mlp.dense_h_to_4h.bias`, m),
      w(`${p}.mlp.dense_4h_to_h.weight`, h, m),
      b(`${p}.mlp.dense_4h_to_h.bias`, h),
    ]
  })
  const v = num(c, "vocab_size")
  return [w("gpt_neox.embed_in.weight", v, h), ...layers, norm("gpt_neox.final_layer_norm.weight", h), b("gpt_neox.final_layer_norm.bias", h), w("embed_out.weight", v, h)]
}

// ------------------------------------------------------------------------------ PEFT module paths

const llamaModules = (i: number) => [
  ...["q_proj", "k_proj", "v_proj", "o_proj"].map((m) => `model.layers.${i}.self_attn.${m}`),
  ...["gate_proj", "up_proj", "down_proj"].map((m) => `model.layers.${i}.mlp.${m}`),
]
const llamaTargets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
// PEFT wraps the GPT2LMHeadModel, whose body is `transformer` whatever the file's tensor names.
const gpt2Modules = (i: number) => [`transformer.h.${i}.attn.c_attn`, `transformer.h.${i}.attn.c_proj`, `transformer.h.${i}.mlp.c_fc`, `transformer.h.${i}.mlp.c_proj`]

// ------------------------------------------------------------------------------ tokens

const llama3Specials: ReadonlyArray<SpecialToken> = [
  "<|begin_of_text|>",
  "<|end_of_text|>",
  "<|reserved_special_token_0|>",
  "<|reserved_special_token_1|>",
  "<|finetune_right_pad_id|>",
  "<|reserved_special_token_2|>",
  "<|start_header_id|>",
  "<|end_header_id|>",
  "<|eom_id|>",
  "<|eot_id|>",
  "<|python_tag|>",
  ...range(245).map((k) => `<|reserved_special_token_${k + 3}|>`),
].map((content, k) => ({ id: 128000 + k, content }))

const llama3TokenizerConfig = {
  bos_token: "<|begin_of_text|>",
  clean_up_tokenization_spaces: true,
  eos_token: "<|eot_id|>",
  model_input_names: ["input_ids", "attention_mask"],
  model_max_length: 131072,
  tokenizer_class: "PreTrainedTokenizerFast",
}

const qwenSpecials = (withQwen3: boolean): ReadonlyArray<SpecialToken> => {
  const special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
  const plain = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", ...(withQwen3 ? ["<tool_response>", "</tool_response>", "<think>", "</think>"] : [])]
  return [...special.map((content) => ({ content, special: true })), ...plain.map((content) => ({ content, special: false }))].map((t, k) => ({ ...t, id: 151643 + k }))
}

const qwenTokenizerConfig = {
  add_bos_token: false,
  add_prefix_space: false,
  additional_special_tokens: ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"],
  bos_token: null,
  clean_up_tokenization_spaces: false,
  eos_token: "<|im_end|>",
  errors: "replace",
  model_max_length: 131072,
  pad_token: "<|endoftext|>",
  split_special_tokens: false,
  tokenizer_class: "Qwen2Tokenizer",
  unk_token: null,
}

const qwenRendered = () => `<|im_start|>system\n${system}<|im_end|>\n<|im_start|>user\n${question}<|im_end|>\n<|im_start|>assistant\n`

const llama3Rendered = (date: string) =>
  `<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: ${date}\n\n${system}<|eot_id|>` +
  `<|start_header_id|>user<|end_header_id|>\n\n${question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`

/** strftime_now("%d %b %Y"), which transformers passes to chat templates: today's date. */
const today = () => {
  const d = new Date()
  const month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][d.getMonth()]
  return `${String(d.getDate()).padStart(2, "0")} ${month} ${d.getFullYear()}`
}

const sentencepieceTokenizerConfig = (overrides: Record<string, unknown>) => ({
  add_bos_token: true,
  add_eos_token: false,
  clean_up_tokenization_spaces: false,
  sp_model_kwargs: {},
  spaces_between_special_tokens: false,
  use_default_system_prompt: false,
  ...overrides,
})

const gemmaSpecials = (startOfTurn: number): ReadonlyArray<SpecialToken> => [
  { id: 0, content: "<pad>" },
  { id: 1, content: "<eos>" },
  { id: 2, content: "<bos>" },
  { id: 3, content: "<unk>" },
  { id: 4, content: "<mask>" },
  { id: startOfTurn, content: "<start_of_turn>" },
  { id: startOfTurn + 1, content: "<end_of_turn>" },
]

// ------------------------------------------------------------------------------ the families

/** openai-community/gpt2's config.json. */
const gpt2Config = {
  activation_function: "gelu_new",
  architectures: ["GPT2LMHeadModel"],
  attn_pdrop: 0.1,
  bos_token_id: 50256,
  embd_pdrop: 0.1,
  eos_token_id: 50256,
  initializer_range: 0.02,
  layer_norm_epsilon: 1e-5,
  model_type: "gpt2",
  n_ctx: 1024,
  n_embd: 768,
  n_head: 12,
  n_layer: 12,
  n_positions: 1024,
  resid_pdrop: 0.1,
  summary_activation: null,
  summary_first_dropout: 0.1,
  summary_proj_to_labels: true,
  summary_type: "cls_index",
  summary_use_proj: true,
  task_specific_params: { "text-generation": { do_sample: true, max_length: 50 } },
  vocab_size: 50257,
}

const llamaSizes = { hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 }

export const families: ReadonlyArray<Family> = [
  {
    name: "Llama 3.1 8B Instruct",
    repo: "meta-llama/Llama-3.1-8B-Instruct",
    config: {
      architectures: ["LlamaForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 128000,
      eos_token_id: [128001, 128008, 128009],
      hidden_act: "silu",
      hidden_size: 4096,
      initializer_range: 0.02,
      intermediate_size: 14336,
      max_position_embeddings: 131072,
      mlp_bias: false,
      model_type: "llama",
      num_attention_heads: 32,
      num_hidden_layers: 32,
      num_key_value_heads: 8,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
      rope_theta: 500000.0,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
      transformers_version: "4.42.3",
      use_cache: true,
      vocab_size: 128256,
    },
    sizes: llamaSizes,
    dtype: "BF16",
    shards: 4,
    tensors: llamaLayout(),
    generationConfig: { bos_token_id: 128000, do_sample: true, eos_token_id: [128001, 128008, 128009], temperature: 0.6, top_p: 0.9, transformers_version: "4.42.3" },
    tokenizer: { size: 128256, specials: llama3Specials, postProcessorBos: "<|begin_of_text|>", config: llama3TokenizerConfig, resolved: { bos: "<|begin_of_text|>", eos: "<|eot_id|>" } },
    chat: { messages: withSystem, rendered: () => llama3Rendered("26 Jul 2024") },
    loraTargets: llamaTargets,
    peftModules: llamaModules,
  },
  {
    name: "Llama 3.2 3B Instruct (tied embeddings)",
    repo: "meta-llama/Llama-3.2-3B-Instruct",
    config: {
      architectures: ["LlamaForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 128000,
      eos_token_id: [128001, 128008, 128009],
      head_dim: 128,
      hidden_act: "silu",
      hidden_size: 3072,
      initializer_range: 0.02,
      intermediate_size: 8192,
      max_position_embeddings: 131072,
      mlp_bias: false,
      model_type: "llama",
      num_attention_heads: 24,
      num_hidden_layers: 28,
      num_key_value_heads: 8,
      pretraining_tp: 1,
      rms_norm_eps: 1e-5,
      rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
      rope_theta: 500000.0,
      tie_word_embeddings: true,
      torch_dtype: "bfloat16",
      transformers_version: "4.45.0.dev0",
      use_cache: true,
      vocab_size: 128256,
    },
    sizes: { ...llamaSizes, head_dim: 8 },
    dtype: "BF16",
    shards: 2,
    tensors: llamaLayout(),
    generationConfig: { bos_token_id: 128000, do_sample: true, eos_token_id: [128001, 128008, 128009], temperature: 0.6, top_p: 0.9, transformers_version: "4.45.0.dev0" },
    tokenizer: { size: 128256, specials: llama3Specials, postProcessorBos: "<|begin_of_text|>", config: llama3TokenizerConfig, resolved: { bos: "<|begin_of_text|>", eos: "<|eot_id|>" } },
    chat: { messages: withSystem, rendered: () => llama3Rendered(today()) },
    loraTargets: llamaTargets,
    peftModules: llamaModules,
  },
  {
    name: "Qwen2.5 7B Instruct (qkv bias)",
    repo: "Qwen/Qwen2.5-7B-Instruct",
    config: {
      architectures: ["Qwen2ForCausalLM"],
      attention_dropout: 0.0,
      bos_token_id: 151643,
      eos_token_id: 151645,
      hidden_act: "silu",
      hidden_size: 3584,
      initializer_range: 0.02,
      intermediate_size: 18944,
      max_position_embeddings: 32768,
      max_window_layers: 28,
      model_type: "qwen2",
      num_attention_heads: 28,
      num_hidden_layers: 28,
      num_key_value_heads: 4,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000.0,
      sliding_window: 131072,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
      transformers_version: "4.43.1",
      use_cache: true,
      use_sliding_window: false,
      vocab_size: 152064,
    },
    sizes: llamaSizes,
    dtype: "BF16",
    shards: 4,
    tensors: llamaLayout({ qkvBias: true }),
    generationConfig: { bos_token_id: 151643, pad_token_id: 151643, do_sample: true, eos_token_id: [151645, 151643], repetition_penalty: 1.05, temperature: 0.7, top_p: 0.8, top_k: 20, transformers_version: "4.37.0" },
    tokenizer: { size: 151665, specials: qwenSpecials(false), config: qwenTokenizerConfig, resolved: { eos: "<|im_end|>", pad: "<|endoftext|>" } },
    chat: { messages: withSystem, rendered: qwenRendered },
    loraTargets: llamaTargets,
    peftModules: llamaModules,
  },
  {
    name: "Qwen3 8B (q/k norms, head_dim independent of hidden)",
    repo: "Qwen/Qwen3-8B",
    config: {
      architectures: ["Qwen3ForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      bos_token_id: 151643,
      eos_token_id: 151645,
      head_dim: 128,
      hidden_act: "silu",
      hidden_size: 4096,
      initializer_range: 0.02,
      intermediate_size: 12288,
      max_position_embeddings: 40960,
      max_window_layers: 36,
      model_type: "qwen3",
      num_attention_heads: 32,
      num_hidden_layers: 36,
      num_key_value_heads: 8,
      rms_norm_eps: 1e-6,
      rope_scaling: null,
      rope_theta: 1000000,
      sliding_window: null,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
      transformers_version: "4.51.0",
      use_cache: true,
      use_sliding_window: false,
      vocab_size: 151936,
    },
    // head_dim 16 with 4 heads: q is 64 wide against a hidden size of 32
    sizes: { ...llamaSizes, head_dim: 16 },
    dtype: "BF16",
    shards: 5,
    tensors: llamaLayout({ qkNorm: true }),
    generationConfig: { bos_token_id: 151643, do_sample: true, eos_token_id: [151645, 151643], pad_token_id: 151643, temperature: 0.6, top_k: 20, top_p: 0.95, transformers_version: "4.51.0" },
    tokenizer: { size: 151669, specials: qwenSpecials(true), config: qwenTokenizerConfig, resolved: { eos: "<|im_end|>", pad: "<|endoftext|>" } },
    chat: { messages: withSystem, rendered: qwenRendered },
    loraTargets: llamaTargets,
    peftModules: llamaModules,
  },
  {
    name: "Mistral 7B Instruct v0.1 (sliding_window 4096)",
    repo: "mistralai/Mistral-7B-Instruct-v0.1",
    config: {
      architectures: ["MistralForCausalLM"],
      bos_token_id: 1,
      eos_token_id: 2,
      hidden_act: "silu",
      hidden_size: 4096,
      initializer_range: 0.02,
      intermediate_size: 14336,
      max_position_embeddings: 32768,
      model_type: "mistral",
      num_attention_heads: 32,
      num_hidden_layers: 32,
      num_key_value_heads: 8,
      rms_norm_eps: 1e-5,
      rope_theta: 10000.0,
      sliding_window: 4096,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
      transformers_version: "4.34.0.dev0",
      use_cache: true,
      vocab_size: 32000,
    },
    sizes: llamaSizes,
    dtype: "BF16",
    shards: 2,
    tensors: llamaLayout(),
    generationConfig: { bos_token_id: 1, eos_token_id: 2, transformers_version: "4.34.0.dev0" },
    tokenizer: {
      size: 32000,
      specials: [
        { id: 0, content: "<unk>" },
        { id: 1, content: "<s>" },
        { id: 2, content: "</s>" },
      ],
      postProcessorBos: "<s>",
      config: sentencepieceTokenizerConfig({ bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>", pad_token: null, legacy: true, model_max_length: 1e30, tokenizer_class: "LlamaTokenizer" }),
      resolved: { bos: "<s>", eos: "</s>", unk: "<unk>" },
    },
    chat: { messages: withSystem, rendered: () => `<s> [INST] ${system}\n\n${question} [/INST]` },
    loraTargets: llamaTargets,
    peftModules: llamaModules,
  },
  {
    name: "Gemma 2 2B it (soft-capping, alternating windows; ships float32)",
    repo: "google/gemma-2-2b-it",
    config: {
      architectures: ["Gemma2ForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      attn_logit_softcapping: 50.0,
      bos_token_id: 2,
      cache_implementation: "hybrid",
      eos_token_id: [1, 107],
      final_logit_softcapping: 30.0,
      head_dim: 256,
      hidden_act: "gelu_pytorch_tanh",
      hidden_activation: "gelu_pytorch_tanh",
      hidden_size: 2304,
      initializer_range: 0.02,
      intermediate_size: 9216,
      max_position_embeddings: 8192,
      model_type: "gemma2",
      num_attention_heads: 8,
      num_hidden_layers: 26,
      num_key_value_heads: 4,
      pad_token_id: 0,
      query_pre_attn_scalar: 256,
      rms_norm_eps: 1e-6,
      rope_theta: 10000.0,
      sliding_window: 4096,
      torch_dtype: "float32",
      transformers_version: "4.42.4",
      use_cache: true,
      vocab_size: 256000,
    },
    sizes: { ...llamaSizes, head_dim: 16 },
    dtype: "F32",
    shards: 2,
    tensors: llamaLayout({ gemmaNorms: true, tied: true }),
    normStoredAsOffset: true,
    generationConfig: { bos_token_id: 2, cache_implementation: "hybrid", eos_token_id: [1, 107], pad_token_id: 0, transformers_version: "4.42.4" },
    tokenizer: {
      size: 256000,
      specials: gemmaSpecials(106),
      postProcessorBos: "<bos>",
      config: sentencepieceTokenizerConfig({
        additional_special_tokens: ["<start_of_turn>", "<end_of_turn>"],
        bos_token: "<bos>",
        eos_token: "<eos>",
        pad_token: "<pad>",
        unk_token: "<unk>",
        model_max_length: 1e30,
        tokenizer_class: "GemmaTokenizer",
      }),
      resolved: { bos: "<bos>", eos: "<eos>", unk: "<unk>", pad: "<pad>" },
    },
    // Gemma 2's template refuses a system message
    chat: { messages: [{ role: "user", content: question }], rendered: () => `<bos><start_of_turn>user\n${question}<end_of_turn>\n<start_of_turn>model\n` },
    loraTargets: llamaTargets,
    peftModules: llamaModules,
  },
  {
    name: "Gemma 3 1B it (Gemma3ForCausalLM, dual RoPE bases)",
    repo: "google/gemma-3-1b-it",
    config: {
      architectures: ["Gemma3ForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      attn_logit_softcapping: null,
      bos_token_id: 2,
      cache_implementation: "hybrid",
      eos_token_id: [1, 106],
      final_logit_softcapping: null,
      head_dim: 256,
      hidden_activation: "gelu_pytorch_tanh",
      hidden_size: 1152,
      initializer_range: 0.02,
      intermediate_size: 6912,
      max_position_embeddings: 32768,
      model_type: "gemma3_text",
      num_attention_heads: 4,
      num_hidden_layers: 26,
      num_key_value_heads: 1,
      pad_token_id: 0,
      query_pre_attn_scalar: 256,
      rms_norm_eps: 1e-6,
      rope_local_base_freq: 10000,
      rope_scaling: null,
      rope_theta: 1000000,
      sliding_window: 512,
      sliding_window_pattern: 6,
      torch_dtype: "bfloat16",
      transformers_version: "4.50.0.dev0",
      use_cache: true,
      vocab_size: 262144,
    },
    // six layers, so that layer 5 is a global layer (sliding_window_pattern 6) with the other RoPE base
    sizes: { ...llamaSizes, num_hidden_layers: 6, num_key_value_heads: 1, head_dim: 16 },
    dtype: "BF16",
    shards: 1,
    tensors: llamaLayout({ qkNorm: true, gemmaNorms: true, tied: true }),
    normStoredAsOffset: true,
    generationConfig: { bos_token_id: 2, cache_implementation: "hybrid", do_sample: true, eos_token_id: [1, 106], pad_token_id: 0, top_k: 64, top_p: 0.95, transformers_version: "4.50.0.dev0" },
    tokenizer: {
      size: 262144,
      specials: [...gemmaSpecials(105), { id: 255999, content: "<start_of_image>" }, { id: 256000, content: "<end_of_image>" }],
      postProcessorBos: "<bos>",
      config: sentencepieceTokenizerConfig({
        boi_token: "<start_of_image>",
        bos_token: "<bos>",
        eoi_token: "<end_of_image>",
        eos_token: "<eos>",
        image_token: "<image_soft_token>",
        pad_token: "<pad>",
        unk_token: "<unk>",
        model_max_length: 1e30,
        sp_model_kwargs: null,
        tokenizer_class: "GemmaTokenizer",
      }),
      resolved: { bos: "<bos>", eos: "<eos>", unk: "<unk>", pad: "<pad>" },
    },
    chat: { messages: withSystem, rendered: () => `<bos><start_of_turn>user\n${system}\n\n${question}<end_of_turn>\n<start_of_turn>model\n` },
    loraTargets: llamaTargets,
    peftModules: llamaModules,
  },
  {
    name: "Phi-3 mini 4k instruct (fused qkv_proj, gate_up_proj)",
    repo: "microsoft/Phi-3-mini-4k-instruct",
    config: {
      _name_or_path: "Phi-3-mini-4k-instruct",
      architectures: ["Phi3ForCausalLM"],
      attention_bias: false,
      attention_dropout: 0.0,
      auto_map: { AutoConfig: "configuration_phi3.Phi3Config", AutoModelForCausalLM: "modeling_phi3.Phi3ForCausalLM" },
      bos_token_id: 1,
      embd_pdrop: 0.0,
      eos_token_id: 32000,
      hidden_act: "silu",
      hidden_size: 3072,
      initializer_range: 0.02,
      intermediate_size: 8192,
      max_position_embeddings: 4096,
      model_type: "phi3",
      num_attention_heads: 32,
      num_hidden_layers: 32,
      num_key_value_heads: 32,
      original_max_position_embeddings: 4096,
      pad_token_id: 32000,
      resid_pdrop: 0.0,
      rms_norm_eps: 1e-5,
      rope_scaling: null,
      rope_theta: 10000.0,
      sliding_window: 2047,
      tie_word_embeddings: false,
      torch_dtype: "bfloat16",
      transformers_version: "4.40.2",
      use_cache: true,
      vocab_size: 32064,
    },
    sizes: { ...llamaSizes, num_key_value_heads: 4 },
    dtype: "BF16",
    shards: 2,
    tensors: phi3Layout,
    generationConfig: { bos_token_id: 1, eos_token_id: [32000, 32001, 32007], pad_token_id: 32000, transformers_version: "4.40.2" },
    tokenizer: {
      size: 32011,
      specials: [
        { id: 0, content: "<unk>" },
        { id: 1, content: "<s>" },
        { id: 2, content: "</s>" },
        ...["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"].map((content, k) => ({ id: 32000 + k, content })),
      ],
      config: sentencepieceTokenizerConfig({
        add_bos_token: false,
        bos_token: "<s>",
        eos_token: "<|endoftext|>",
        legacy: false,
        model_max_length: 4096,
        pad_token: "<|endoftext|>",
        padding_side: "left",
        tokenizer_class: "LlamaTokenizer",
        unk_token: "<unk>",
      }),
      resolved: { bos: "<s>", eos: "<|endoftext|>", unk: "<unk>", pad: "<|endoftext|>" },
    },
    chat: { messages: withSystem, rendered: () => `<|system|>\n${system}<|end|>\n<|user|>\n${question}<|end|>\n<|assistant|>\n` },
    loraTargets: ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    peftModules: (i) => [`model.layers.${i}.self_attn.qkv_proj`, `model.layers.${i}.self_attn.o_proj`, `model.layers.${i}.mlp.gate_up_proj`, `model.layers.${i}.mlp.down_proj`],
  },
  ...[
    {
      name: "GPT-2 (openai-community/gpt2: no transformer. prefix, h.N.attn.bias buffers, float32)",
      repo: "openai-community/gpt2",
      prefix: "",
      config: gpt2Config,
      buffers: (p: string, n: number) => [causalMask(`${p}.bias`, n, "F32")],
    },
    {
      name: "GPT-2 saved from GPT2LMHeadModel (distilgpt2: transformer. prefix, attn.bias and attn.masked_bias)",
      repo: "distilbert/distilgpt2",
      prefix: "transformer.",
      // distilgpt2's config.json is gpt2's with six layers and a one-label classifier head's fields
      config: { ...gpt2Config, _num_labels: 1, id2label: { "0": "LABEL_0" }, label2id: { LABEL_0: 0 }, n_layer: 6 },
      buffers: (p: string, n: number) => [causalMask(`${p}.bias`, n, "F32"), scalar(`${p}.masked_bias`, -1e4)],
    },
  ].map(
    (g): Family => ({
      name: g.name,
      repo: g.repo,
      config: g.config,
      // n_inner is absent, as published: the MLP is 4 * n_embd wide
      sizes: { n_embd: 32, n_layer: 2, n_head: 4 },
      dtype: "F32",
      shards: 1,
      tensors: gpt2Layout(g.prefix, g.buffers),
      generationConfig: { bos_token_id: 50256, eos_token_id: 50256, transformers_version: "4.26.0.dev0" },
      // openai-community/gpt2's tokenizer_config.json holds only model_max_length: bos, eos and unk
      // are <|endoftext|> by transformers' GPT2Tokenizer defaults
      tokenizer: { size: 50257, specials: [{ id: 50256, content: "<|endoftext|>" }], config: { model_max_length: 1024 }, resolved: { bos: "<|endoftext|>", eos: "<|endoftext|>", unk: "<|endoftext|>" } },
      text: "The sky is",
      loraTargets: ["c_attn", "c_proj", "c_fc"],
      peftModules: gpt2Modules,
    }),
  ),
  {
    name: "Pythia 70M (GPT-NeoX: attention.bias, masked_bias, rotary_emb.inv_freq buffers; ships float16)",
    repo: "EleutherAI/pythia-70m",
    config: {
      architectures: ["GPTNeoXForCausalLM"],
      bos_token_id: 0,
      eos_token_id: 0,
      hidden_act: "gelu",
      hidden_size: 512,
      initializer_range: 0.02,
      intermediate_size: 2048,
      layer_norm_eps: 1e-5,
      max_position_embeddings: 2048,
      model_type: "gpt_neox",
      num_attention_heads: 8,
      num_hidden_layers: 6,
      rotary_emb_base: 10000,
      rotary_pct: 0.25,
      tie_word_embeddings: false,
      torch_dtype: "float16",
      transformers_version: "4.24.0",
      use_cache: true,
      use_parallel_residual: true,
      vocab_size: 50304,
    },
    // head size 16 keeps the rotary part (rotary_pct 0.25) 4 wide
    sizes: { hidden_size: 32, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 2 },
    dtype: "F16",
    shards: 1,
    tensors: neoxLayout,
    generationConfig: { bos_token_id: 0, eos_token_id: 0, transformers_version: "4.24.0" },
    tokenizer: {
      size: 50277,
      specials: [
        { id: 0, content: "<|endoftext|>" },
        { id: 1, content: "<|padding|>" },
      ],
      config: {
        add_prefix_space: false,
        bos_token: "<|endoftext|>",
        clean_up_tokenization_spaces: true,
        eos_token: "<|endoftext|>",
        model_max_length: 1e30,
        tokenizer_class: "GPTNeoXTokenizer",
        unk_token: "<|endoftext|>",
      },
      resolved: { bos: "<|endoftext|>", eos: "<|endoftext|>", unk: "<|endoftext|>" },
    },
    text: "The sky is",
    loraTargets: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    peftModules: (i) => [`gpt_neox.layers.${i}.attention.query_key_value`, `gpt_neox.layers.${i}.attention.dense`, `gpt_neox.layers.${i}.mlp.dense_h_to_4h`, `gpt_neox.layers.${i}.mlp.dense_4h_to_h`],
  },
]

/** The published chat template of a family (tokenizer_config.json chat_template). */
export const chatTemplateOf = (f: Family): string | undefined => (f.repo in templates ? templateOf(f.repo as keyof typeof templates) : undefined)
