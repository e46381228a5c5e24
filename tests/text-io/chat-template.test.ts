// Chat templates of real models (the template strings as published in their tokenizer_config.json)
// rendered on our own conversations. Each expected string is what transformers'
// apply_chat_template produces: Jinja with trim_blocks and lstrip_blocks, so a newline right after
// a {% ... %} tag is dropped while one after {{ ... }} is kept.
import { Effect, Exit } from "effect"
import { describe, expect, it } from "vitest"
import { applyChatTemplate, type ChatMessage, type ChatTemplateError, chatPromptIds, renderChatTemplate } from "../../src/text/chat-template.ts"
import { loadTokenizer } from "../../src/text/tokenizer.ts"
import { vocab, writeTokenizer } from "./fixture.ts"

const LLAMA3_INSTRUCT =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
const ZEPHYR =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
const CHATML_QWEN2 =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
const LLAMA2_CHAT =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"

const chat: ChatMessage[] = [
  { role: "system", content: "Answer in one word." },
  { role: "user", content: "Sky colour?" },
  { role: "assistant", content: " Blue. " },
  { role: "user", content: "Grass?" },
]

const render = (template: string, messages: ChatMessage[], tokens: Record<string, string>, addGenerationPrompt: boolean) =>
  Effect.runSync(renderChatTemplate(template, messages, tokens, { addGenerationPrompt }))

describe("chat templates of real models", () => {
  it("Llama 3 Instruct: bos once, header ids, trimmed contents, generation prompt", () => {
    const tokens = { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" }
    const body =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nAnswer in one word.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nSky colour?<|eot_id|>" +
      "<|start_header_id|>assistant<|end_header_id|>\n\nBlue.<|eot_id|>" +
      "<|start_header_id|>user<|end_header_id|>\n\nGrass?<|eot_id|>"
    expect(render(LLAMA3_INSTRUCT, chat, tokens, false)).toBe(body)
    expect(render(LLAMA3_INSTRUCT, chat, tokens, true)).toBe(body + "<|start_header_id|>assistant<|end_header_id|>\n\n")
  })

  it("TinyLlama / Zephyr: newlines after block tags trimmed, after expressions kept", () => {
    const tokens = { bos_token: "<s>", eos_token: "</s>" }
    const body = "<|system|>\nAnswer in one word.</s>\n<|user|>\nSky colour?</s>\n<|assistant|>\n Blue. </s>\n<|user|>\nGrass?</s>\n"
    expect(render(ZEPHYR, chat, tokens, false)).toBe(body)
    expect(render(ZEPHYR, chat, tokens, true)).toBe(body + "<|assistant|>\n")
  })

  it("ChatML (Qwen2): default system prompt only when none is given", () => {
    const tokens = { eos_token: "<|im_end|>" }
    expect(render(CHATML_QWEN2, chat.slice(1, 2), tokens, true)).toBe(
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n",
    )
    expect(render(CHATML_QWEN2, chat.slice(0, 2), tokens, false)).toBe(
      "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nSky colour?<|im_end|>\n",
    )
  })

  it("Llama 2 chat: system folded into the first user turn, bos per turn, stripped contents", () => {
    expect(render(LLAMA2_CHAT, chat, { bos_token: "<s>", eos_token: "</s>" }, false)).toBe(
      "<s>[INST] <<SYS>>\nAnswer in one word.\n<</SYS>>\n\nSky colour? [/INST] Blue. </s><s>[INST] Grass? [/INST]",
    )
  })

  it("raise_exception in a template is an error value carrying the template's message", () => {
    const exit = Effect.runSyncExit(Effect.flip(renderChatTemplate(LLAMA2_CHAT, [chat[1], chat[1]], { bos_token: "<s>", eos_token: "</s>" }, {}, "m/tokenizer_config.json")))
    if (Exit.isFailure(exit)) throw new Error("expected an error value")
    const e: ChatTemplateError = exit.value
    expect(e.file).toBe("m/tokenizer_config.json")
    expect(e.message).toMatch(/^m\/tokenizer_config\.json: chat_template: rendering failed: .*Conversation roles must alternate/)
  })

  it("a template that does not parse is an error value", () => {
    const exit = Effect.runSyncExit(Effect.flip(renderChatTemplate("{% for x in %}", chat, {})))
    expect(Exit.isSuccess(exit) && exit.value.message).toMatch(/cannot parse/)
  })
})

describe("applyChatTemplate with a tokenizer", () => {
  it("uses the tokenizer's template and special tokens, and encodes without adding bos twice", () => {
    const tok = Effect.runSync(loadTokenizer(writeTokenizer({ bos_token: "<s>", eos_token: "</s>", chat_template: "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}" })))
    const messages: ChatMessage[] = [{ role: "user", content: "hello world" }]
    expect(Effect.runSync(applyChatTemplate(tok, messages))).toBe("<s><|im_start|>hello world<|im_end|>")
    const v = vocab()
    expect(Effect.runSync(chatPromptIds(tok, messages))).toEqual([0, 2, v["hello"], v["Ġworld"], 3])
  })

  it("a model without a chat template gets an error naming its tokenizer_config.json", () => {
    const tok = Effect.runSync(loadTokenizer(writeTokenizer({ bos_token: "<s>" })))
    const exit = Effect.runSyncExit(Effect.flip(applyChatTemplate(tok, chat)))
    expect(Exit.isSuccess(exit) && exit.value.message).toMatch(/tokenizer_config\.json: chat_template: missing/)
  })
})
