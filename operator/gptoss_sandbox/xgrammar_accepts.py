"""Which outputs a structural tag lets the engine generate, as vLLM's grammar backend
(xgrammar) decides it token by token.

Runs under the engine venv's python (it imports ``xgrammar`` and ``transformers``), by
path: ``python xgrammar_accepts.py < request.json``. The request is ``{"vocab": PATH,
"stop": [ids], "tags": {name: tag}, "outputs": {name: [token ids]}}``; the answer,
``{tag name: {output name: accepted}}``. An output is accepted when the grammar takes
each of its tokens and has ended after the last (a stop token, as vLLM ends one).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main() -> int:
    import xgrammar
    from tiny_gptoss import VOCAB_SIZE, build_tokenizer
    from transformers import PreTrainedTokenizerFast

    request = json.load(sys.stdin)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(request["vocab"]))
    info = xgrammar.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=VOCAB_SIZE, stop_token_ids=request["stop"]
    )
    compiler = xgrammar.GrammarCompiler(info)
    answers: dict[str, Any] = {}
    for name, tag in request["tags"].items():
        grammar = compiler.compile_structural_tag(json.dumps(tag))
        answers[name] = {}
        for output, ids in request["outputs"].items():
            matcher = xgrammar.GrammarMatcher(grammar)
            taken = all(matcher.accept_token(token) for token in ids)
            answers[name][output] = taken and matcher.is_terminated()
    json.dump(answers, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
