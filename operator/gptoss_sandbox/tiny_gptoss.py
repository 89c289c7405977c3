"""Build a tiny gpt-oss checkpoint that the real vLLM engine loads and serves on a CPU.

The checkpoint has gpt-oss's architecture, config keys, tokenizer and special tokens, at a
size that builds in seconds: 2 layers (sliding then full attention, yarn rope as in the
real config), hidden size 64, 4 experts (top 2), 4 query and 2 key/value heads of 64,
bf16 weights, the full o200k_harmony vocabulary (201088 ids). Three variants:

* ``random``: the weights transformers initializes from a fixed seed; the output is
  garbage, for tests of malformed output.
* ``scripted``: weights set by hand so that any prompt ending in ``<|start|>assistant``
  gets ``SCRIPTED_REPLY``: an analysis message then a final one. Each reply token leads
  every other by 56 logits, so sampling gives the reply at any usual temperature (up to
  2 or so). Expert outputs and every attention output but one head are zero, so the
  residual stream holds the current token's embedding, one-hot on a dimension of its own,
  and ``lm_head`` maps each token to its successor. ``<|channel|>`` and ``<|message|>``
  occur in both messages with different successors; one head of the full-attention layer
  tells the two apart: at every position it attends to the first token of the analysis
  text (its "marker") when that token is anywhere in the context, and copies a "flag"
  dimension into the residual. The successor of those two tokens depends on the flag.
  So a prompt that already holds the marker token gets the final message only (still
  valid harmony). ``scripted_reply.json`` in the folder records the reply.
* ``tools``: scripted the same way, as one step of a tool loop. Asked anything, it calls
  ``TOOL_NAME`` with ``TOOL_ARGUMENTS`` (``TOOL_CALL_REPLY``, ending in ``<|call|>``); once
  the context holds a call (``<|call|>``, the marker: a conversation that carries the
  call and its result), it answers ``TOOL_ANSWER`` in the final channel.

Runs under the engine venv (torch, transformers, tokenizers, tiktoken), by file path:
``python tiny_gptoss.py --out DIR --variant scripted --vocab o200k_base.tiktoken``. Only
the stdlib is imported at module level, so the constants import anywhere.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VARIANTS = ("scripted", "random", "tools")
SEED = 20250805
SCRIPTED_ANALYSIS = "Scripted reasoning: greet briefly"
SCRIPTED_ANSWER = "Hello from the tiny gpt-oss model!"


def harmony_reply(analysis: str, answer: str) -> str:
    """An analysis message, then a final one: what follows ``<|start|>assistant``."""
    return (
        f"<|channel|>analysis<|message|>{analysis}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{answer}<|return|>"
    )


SCRIPTED_REPLY = harmony_reply(SCRIPTED_ANALYSIS, SCRIPTED_ANSWER)
REPLY_FILE = "scripted_reply.json"

TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"city": "Paris"}'
TOOL_ANSWER = "It is sunny in Paris today."
# A call as the harmony guide writes one: the recipient after the channel.
TOOL_CALL_REPLY = (
    f"<|channel|>commentary to=functions.{TOOL_NAME} <|constrain|>json"
    f"<|message|>{TOOL_ARGUMENTS}<|call|>"
)
TOOL_ANSWER_REPLY = f"<|channel|>final<|message|>{TOOL_ANSWER}<|return|>"

VOCAB_SIZE = 201088
FIRST_SPECIAL_ID = 199998
SPECIAL_NAMES = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
}
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

HIDDEN = 64
HEAD_DIM = 64
MAX_POSITIONS = 131072
CONFIG = {
    "num_hidden_layers": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": VOCAB_SIZE,
    "hidden_size": HIDDEN,
    "intermediate_size": HIDDEN,
    "head_dim": HEAD_DIM,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"],
    "max_position_embeddings": MAX_POSITIONS,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 150000.0,
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "original_max_position_embeddings": 4096,
        "truncate": False,
    },
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "attention_bias": True,
    "pad_token_id": 199999,
    "eos_token_id": 200002,
    "architectures": ["GptOssForCausalLM"],
}
GENERATION_CONFIG = {
    "bos_token_id": 199998,
    "do_sample": True,
    "eos_token_id": [200002, 199999, 200012],
    "pad_token_id": 199999,
}
SPECIAL_TOKENS_MAP = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|return|>",
    "pad_token": "<|endoftext|>",
}
TOKENIZER_CONFIG = {
    **SPECIAL_TOKENS_MAP,
    "clean_up_tokenization_spaces": False,
    "model_input_names": ["input_ids", "attention_mask"],
    "model_max_length": MAX_POSITIONS,
    "tokenizer_class": "PreTrainedTokenizerFast",
}

# Scripted weights. The final RMSNorm scales a one-hot residual to sqrt(HIDDEN) = 8, or to
# 8/sqrt(2) per dimension when the flag is also set; logits are these weights times that.
_STEP = 20.0  # lm_head weight from a token's dimension to its successor
_FLAGGED = 10.0  # successor when the flag is set: this much on the token and on the flag
_MARKER_QUERY = 4.0  # query bias; with _MARKER_KEY and yarn's scaling, a score of ~40
_MARKER_KEY = 5.5
_ROPE_SLOWEST = HEAD_DIM - 1  # the dimension that rope rotates least (< 0.05 rad)


def special_token_names() -> list[str]:
    """Names of the special tokens, ids FIRST_SPECIAL_ID .. VOCAB_SIZE-1 in order."""
    return [SPECIAL_NAMES.get(i, f"<|reserved_{i}|>") for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)]


def build_tokenizer(vocab: Path) -> Any:
    """o200k_harmony as a ``tokenizers.Tokenizer``, from the o200k_base vocab file."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    names = special_token_names()
    tokenizer = TikTokenConverter(
        vocab_file=str(vocab), pattern=O200K_PATTERN, extra_special_tokens=names
    ).converted()
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise ValueError(f"{vocab} gives {tokenizer.get_vocab_size()} ids, not {VOCAB_SIZE}")
    for offset, name in enumerate(names):
        if tokenizer.token_to_id(name) != FIRST_SPECIAL_ID + offset:
            raise ValueError(f"{name} did not get id {FIRST_SPECIAL_ID + offset}")
    return tokenizer


class Script:
    """A reply as a two-state machine: (token, flag) -> next token.

    ``before`` (a chain of tokens from the prompt's last one) is followed while the context
    lacks the marker, ``after`` once it holds it; the flag is on from the marker's own
    position (attention includes the current one).
    """

    def __init__(self, before: Sequence[int], after: Sequence[int], marker: int) -> None:
        self.marker = marker
        self.by_flag: dict[tuple[int, bool], int] = {}
        for flag, chain in ((False, before), (True, after)):
            for token, successor in itertools.pairwise(chain):
                if self.by_flag.setdefault((token, flag), successor) != successor:
                    raise ValueError(f"token {token} needs two successors in one part of the reply")
        # Tokens whose successor depends on the flag.
        self.conditional = {
            token
            for (token, flag), successor in self.by_flag.items()
            if flag and self.by_flag.get((token, False), successor) != successor
        }
        tokens = sorted({*before, *after, marker})
        self.dims = {token: dim for dim, token in enumerate(tokens)}
        self.flag_dim = len(self.dims)
        if self.flag_dim >= HIDDEN:
            raise ValueError(f"the reply needs {self.flag_dim + 1} dimensions; there are {HIDDEN}")

    @classmethod
    def split_at_marker(cls, chain: Sequence[int], marker: int) -> Script:
        """One chain whose flag turns on at its first ``marker``."""
        at = list(chain).index(marker)
        return cls(chain[: at + 1], chain[at:], marker)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def scripted_reply(tokenizer: Any, analysis: str, answer: str) -> tuple[list[int], Script]:
    """The reply's ids and its machine; the chain starts at the prompt's assistant."""
    reply_ids = _ids(tokenizer, harmony_reply(analysis, answer))
    marker = _ids(tokenizer, analysis)[0]
    chain = [tokenizer.token_to_id("assistant"), *reply_ids]
    return reply_ids, Script.split_at_marker(chain, marker)


def tool_script(tokenizer: Any) -> tuple[list[int], list[int], Script]:
    """(the call's ids, the answer's ids, the machine): the call until the context holds
    one, then the answer."""
    assistant = tokenizer.token_to_id("assistant")
    call_ids = _ids(tokenizer, TOOL_CALL_REPLY)
    answer_ids = _ids(tokenizer, TOOL_ANSWER_REPLY)
    script = Script([assistant, *call_ids], [assistant, *answer_ids], call_ids[-1])
    return call_ids, answer_ids, script


def set_scripted_weights(model: Any, script: Script) -> None:
    """Overwrite every weight so that the model follows ``script`` (see the module doc)."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        embed = model.model.embed_tokens.weight
        for token, dim in script.dims.items():
            embed[token, dim] = 1.0
        # Full-attention layer, head 0 (and its key/value head 0): the marker lookup.
        attention = model.model.layers[1].self_attn
        marker_dim = script.dims[script.marker]
        attention.q_proj.bias[_ROPE_SLOWEST] = _MARKER_QUERY
        attention.k_proj.weight[_ROPE_SLOWEST, marker_dim] = _MARKER_KEY
        attention.v_proj.weight[0, marker_dim] = 1.0
        # The normalized marker is 8 on its dimension: the flag equals the embeddings' 1.
        attention.o_proj.weight[script.flag_dim, 0] = 1.0 / 8
        head = model.lm_head.weight
        for (token, flag), successor in script.by_flag.items():
            dim = script.dims[token]
            if token not in script.conditional:
                head[successor, dim] = _STEP
            elif flag:
                head[successor, dim] += _FLAGGED
                head[successor, script.flag_dim] += _FLAGGED
            else:
                head[successor, dim] += _STEP
                head[successor, script.flag_dim] -= _STEP


def check_scripted(model: Any, tokenizer: Any, prompt: str, expected: Sequence[int]) -> None:
    """Greedy decoding of ``prompt`` with transformers must give exactly ``expected``."""
    import torch

    ids = _ids(tokenizer, prompt)
    generated: list[int] = []
    with torch.no_grad():
        while len(generated) < len(expected):
            logits = model(torch.tensor([ids + generated])).logits[0, -1]
            generated.append(int(logits.argmax()))
            if generated[-1] != expected[len(generated) - 1]:
                raise RuntimeError(f"the scripted model said {generated}, not {expected}")


ASK = "<|start|>user<|message|>Say hello.<|end|><|start|>assistant"
# The conversation after the call: the call as the renderer writes it, and its result.
AFTER_CALL = (
    "<|start|>user<|message|>What is the weather in Paris?<|end|>"
    f"<|start|>assistant to=functions.{TOOL_NAME}<|channel|>commentary json<|message|>"
    f"{TOOL_ARGUMENTS}<|call|><|start|>functions.{TOOL_NAME} to=assistant<|channel|>commentary"
    '<|message|>{"sky": "clear"}<|end|><|start|>assistant'
)


def _decoded(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


def build(out: Path, variant: str, vocab: Path, analysis: str, answer: str) -> None:
    """Write the checkpoint folder ``out``."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
    tokenizer = build_tokenizer(vocab)
    torch.manual_seed(SEED)
    config = GptOssConfig(**CONFIG)
    model = GptOssForCausalLM(config).to(torch.bfloat16).eval()
    record: dict[str, Any] | None = None
    if variant == "scripted":
        reply_ids, script = scripted_reply(tokenizer, analysis, answer)
        set_scripted_weights(model, script)
        check_scripted(model, tokenizer, ASK, reply_ids)
        record = {
            "analysis": analysis,
            "answer": answer,
            "reply": harmony_reply(analysis, answer),
            "token_ids": reply_ids,
            "tokens": _decoded(tokenizer, reply_ids),
        }
    elif variant == "tools":
        call_ids, answer_ids, script = tool_script(tokenizer)
        set_scripted_weights(model, script)
        check_scripted(model, tokenizer, ASK, call_ids)
        check_scripted(model, tokenizer, AFTER_CALL, answer_ids)
        record = {
            "call": TOOL_CALL_REPLY,
            "call_ids": call_ids,
            "answer": TOOL_ANSWER_REPLY,
            "answer_ids": answer_ids,
        }
    if record is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPLY_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    model.save_pretrained(out)  # creates ``out`` if needed
    tokenizer.save(str(out / "tokenizer.json"))
    for name, document in (
        ("generation_config.json", GENERATION_CONFIG),
        ("tokenizer_config.json", TOKENIZER_CONFIG),
        ("special_tokens_map.json", SPECIAL_TOKENS_MAP),
    ):
        (out / name).write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a tiny gpt-oss checkpoint.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--vocab", type=Path, required=True, help="o200k_base.tiktoken")
    parser.add_argument("--reply", default=SCRIPTED_ANSWER, help="scripted final answer")
    parser.add_argument("--analysis", default=SCRIPTED_ANALYSIS, help="scripted reasoning")
    args = parser.parse_args(argv)
    build(args.out, args.variant, args.vocab, args.analysis, args.reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
