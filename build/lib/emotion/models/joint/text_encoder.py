"""all-MiniLM-L6-v2 sentence embeddings in plain PyTorch, for CocoER's class prototypes.

The model is a 6-layer BERT (hidden 384, 12 heads, GELU FFN of 1536) followed by mean
pooling over the non-padding tokens and L2 normalisation, as sentence-transformers runs
it. Weights are read from the packaged ``model.safetensors`` (``emotion.weights``
name ``minilm_l6_v2``) with a small reader written here; the tokenizer is an uncased
BERT WordPiece over the packaged ``vocab.txt``. Neither ``transformers`` nor
``safetensors``/``tokenizers`` is needed.

The text encoder runs once, when a model is built for a label set:
``class_prototypes(labels)`` -> [k, 384] unit vectors, stored in the model's state dict
(and so in every checkpoint); inference never needs this module.
"""

from __future__ import annotations

import json
import math
import struct
import unicodedata
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emotion.weights import resolve

DEFAULT_TEMPLATE = "This photo shows {} emotion."

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file: 8-byte little-endian header size, JSON header, raw data."""
    data = Path(path).read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    base = 8 + header_size
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        buffer = bytearray(data[base + start : base + end])  # writable copy: frombuffer warns otherwise
        flat = torch.frombuffer(buffer, dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


# -- tokenizer -------------------------------------------------------------------------
def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII character as punctuation.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)  # fmt: skip


class WordPieceTokenizer:
    """Uncased BERT tokenizer: clean, lowercase, strip accents, split on whitespace and
    punctuation (CJK characters become words), then greedy longest-match WordPiece."""

    def __init__(self, vocab_path: str | Path, max_length: int = 256, max_chars_per_word: int = 100):
        tokens = Path(vocab_path).read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens = tokens[:-1]
        self.vocab = {tok: i for i, tok in enumerate(tokens)}
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in self.vocab:
                raise ValueError(f"{vocab_path}: vocabulary has no {special} token")
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.max_length = max_length
        self.max_chars_per_word = max_chars_per_word

    def basic_tokens(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if _is_cjk(cp):
                chars.extend((" ", ch, " "))
            elif ch.isspace():
                chars.append(" ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")  # strip accents
        words: list[str] = []
        for word in text.split():
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids with [CLS] ... [SEP], truncated to ``max_length``."""
        ids = [i for word in self.basic_tokens(text) for i in self.wordpiece(word)]
        return [self.cls_id, *ids[: self.max_length - 2], self.sep_id]

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch -> (input_ids [n, L] int64, attention_mask [n, L] int64), right-padded."""
        encoded = [self.encode(t) for t in texts]
        length = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e)
            mask[row, : len(e)] = 1
        return ids, mask


# -- BERT ------------------------------------------------------------------------------
class BertLayer(nn.Module):
    """Post-norm transformer layer with BERT's parameter names."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + additive_mask, dim=-1)
        context = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = self.attn_norm(x + self.attn_out(context))
        return self.out_norm(x + self.output(F.gelu(self.intermediate(x))))  # exact (erf) GELU, as BERT


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2: BERT encoder + mean pooling + L2 normalisation -> [n, hidden]."""

    def __init__(self, vocab_size: int = 30522, hidden: int = 384, layers: int = 6, heads: int = 12,
                 intermediate: int = 1536, max_positions: int = 512, type_vocab: int = 2, eps: float = 1e-12):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.embed_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, intermediate, eps) for _ in range(layers))
        self.hidden = hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``embeddings`` [n, hidden] (unit norm) and ``tokens`` [n, L, hidden]."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
             + self.token_type_embeddings(torch.zeros_like(input_ids)))  # fmt: skip
        x = self.embed_norm(x)
        mask = attention_mask.to(x.dtype)
        additive = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, additive)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1e-9)
        return {"embeddings": F.normalize(pooled, dim=-1), "tokens": x}


def _rename_bert_keys(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """HF BertModel key names -> ``MiniLMTextEncoder`` names (unused pooler dropped)."""
    out = {
        "word_embeddings.weight": state["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": state["embeddings.position_embeddings.weight"],
        "token_type_embeddings.weight": state["embeddings.token_type_embeddings.weight"],
        "embed_norm.weight": state["embeddings.LayerNorm.weight"],
        "embed_norm.bias": state["embeddings.LayerNorm.bias"],
    }
    names = {
        "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
        "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense", "output": "output.dense", "out_norm": "output.LayerNorm",
    }  # fmt: skip
    for i in range(layers):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{p}"] = state[f"encoder.layer.{i}.{theirs}.{p}"]
    return out


class SentenceEncoder:
    """Tokenizer + encoder: ``encode(texts) -> [n, 384]`` unit vectors (float32, CPU)."""

    def __init__(self, tokenizer: WordPieceTokenizer, model: MiniLMTextEncoder):
        self.tokenizer = tokenizer
        self.model = model.eval()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        if isinstance(texts, str) or not len(texts):
            raise ValueError("encode expects a non-empty list of strings")
        chunks = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer(texts[start : start + batch_size])
            chunks.append(self.model(ids, mask)["embeddings"])
        return torch.cat(chunks)


def load_text_encoder(source: str = "minilm_l6_v2") -> SentenceEncoder:
    """Load all-MiniLM-L6-v2 from its packaged folder (safetensors + config + vocab)."""
    weights = resolve(source)
    folder = weights.parent
    config = json.loads((folder / "config.json").read_text())
    model = MiniLMTextEncoder(
        vocab_size=config["vocab_size"], hidden=config["hidden_size"], layers=config["num_hidden_layers"],
        heads=config["num_attention_heads"], intermediate=config["intermediate_size"],
        max_positions=config["max_position_embeddings"], type_vocab=config["type_vocab_size"],
        eps=config["layer_norm_eps"],
    )
    state = _rename_bert_keys(load_safetensors(weights), config["num_hidden_layers"])
    model.load_state_dict(state, strict=True)
    max_length = 256
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = int(json.loads(st_config.read_text()).get("max_seq_length", max_length))
    return SentenceEncoder(WordPieceTokenizer(folder / "vocab.txt", max_length=max_length), model)


def class_prototypes(labels: Sequence[str], template: str = DEFAULT_TEMPLATE,
                     encoder: SentenceEncoder | None = None) -> torch.Tensor:
    """One prompt per class (``template.format(label)``) -> [k, 384] unit prototypes.

    Label names are lower-cased and '/' becomes ' or ' ("Doubt/Confusion" -> "doubt or
    confusion") so the prompt reads as a sentence.
    """
    if not labels:
        raise ValueError("class_prototypes needs at least one label")
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")
    encoder = encoder or load_text_encoder()
    prompts = [template.format(str(label).replace("/", " or ").lower()) for label in labels]
    return encoder.encode(prompts)
