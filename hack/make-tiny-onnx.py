"""Build the tiny random-weight ONNX Runtime GenAI model in tests/fixtures/tiny-onnx, offline.

Needs torch, transformers, tokenizers, onnx-ir and onnxruntime-genai (not part of any extra):

    python3 -m venv /tmp/onnxbuild
    /tmp/onnxbuild/bin/pip install torch transformers tokenizers onnx onnx-ir onnxruntime-genai
    /tmp/onnxbuild/bin/python hack/make-tiny-onnx.py

The output is a few hundred KB and committed, so tests never need torch.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger("make-tiny-onnx")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tiny-onnx"
SPECIALS = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def corpus() -> list[str]:
    """Local text only: the repository's Markdown and Python sources."""
    lines: list[str] = []
    for path in sorted(ROOT.glob("**/*.md")) + sorted((ROOT / "runtime-image").glob("**/*.py")):
        if ".venv" in path.parts or "fixtures" in path.parts:
            continue
        lines += path.read_text(encoding="utf-8", errors="ignore").splitlines()
    return [line for line in lines if line.strip()] or ["hello world"]


def build_tokenizer(folder: Path) -> None:
    """A byte-level BPE with a 1k vocabulary and a chat template."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def build_model(folder: Path, vocab_size: int) -> None:
    """A random 2-layer Llama with the ids the tokenizer uses."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=SPECIALS.index("<s>"),
        eos_token_id=SPECIALS.index("</s>"),
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).eval().save_pretrained(folder)


def main() -> int:
    """Build into a temporary folder, then replace the fixture."""
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        out = Path(tmp) / "onnx"
        build_tokenizer(hf)
        vocab = len(json.loads((hf / "tokenizer.json").read_text())["model"]["vocab"])
        build_model(hf, vocab)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime_genai.models.builder",
                "-i",
                str(hf),
                "-o",
                str(out),
                "-p",
                "int4",
                "-e",
                "cpu",
                "-c",
                str(Path(tmp) / "cache"),
            ],
            check=True,
        )
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(out, OUT)
    log.info("wrote %s: %s", OUT, sorted(p.name for p in OUT.iterdir()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
