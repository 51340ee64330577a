"""all-MiniLM-L6-v2 in plain PyTorch: tokenizer, published similarities, prototypes."""

from __future__ import annotations

import pytest
import torch

from emotion.models.joint.text_encoder import WordPieceTokenizer, class_prototypes, load_text_encoder
from emotion.weights import WeightsNotFoundError, resolve

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    try:
        return load_text_encoder()
    except WeightsNotFoundError as exc:
        pytest.skip(str(exc))


def test_tokenizer_matches_bert_uncased_ids(encoder):
    tok = encoder.tokenizer
    # [CLS] this photo shows happiness emotion . [SEP] in the packaged vocab.txt
    assert tok.encode("This photo shows happiness emotion.") == [101, 2023, 6302, 3065, 8404, 7603, 1012, 102]
    assert tok.basic_tokens("Héllo,  Doubt/Confusion!\t你好") == ["hello", ",", "doubt", "/", "confusion", "!", "你", "好"]
    # Greedy longest-match-first WordPiece, as bert-base-uncased splits these words.
    assert tok.wordpiece("embedding") == [tok.vocab[p] for p in ("em", "##bed", "##ding")]
    assert tok.wordpiece("unaffable") == [tok.vocab[p] for p in ("una", "##ffa", "##ble")]
    assert tok.wordpiece("x" * 101) == [tok.unk_id]


def test_tokenizer_rejects_a_vocab_without_specials(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("hello\nworld\n")
    with pytest.raises(ValueError, match="no \\[PAD\\] token"):
        WordPieceTokenizer(vocab)


def test_embeddings_match_published_sentence_transformers_values(encoder):
    # Cosine similarities printed by the sbert.net "Semantic Textual Similarity" example
    # for all-MiniLM-L6-v2 (sentence-transformers' own implementation).
    a = encoder.encode(["The new movie is awesome", "The cat sits outside", "A man is playing guitar"])
    b = encoder.encode(["The dog plays in the garden", "The new movie is so great", "A woman watches TV"])
    published = torch.tensor([[0.0543, 0.8939, -0.0502], [0.2838, -0.0029, 0.1310], [0.2277, -0.0136, -0.0327]])
    torch.testing.assert_close(a @ b.T, published, atol=6e-4, rtol=0)


def test_emotion_prompts_are_unit_norm_and_semantic(encoder):
    e = encoder.encode([f"This photo shows {w} emotion." for w in ("happiness", "joy", "anger", "happy", "fear")])
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    happy, joy, anger, happy2, fear = e
    assert happy @ joy > happy @ anger
    assert happy @ happy2 > happy @ fear


def test_padding_does_not_change_an_embedding(encoder):
    short = "This photo shows fear emotion."
    alone = encoder.encode([short])
    padded = encoder.encode([short, "A much longer sentence that forces the short one to be padded with many tokens."])
    torch.testing.assert_close(padded[:1], alone, atol=1e-5, rtol=0)


def test_class_prototypes(encoder):
    labels = ["Happiness", "Doubt/Confusion", "Anger"]
    protos = class_prototypes(labels, encoder=encoder)
    assert protos.shape == (3, 384)
    torch.testing.assert_close(protos[1:2], encoder.encode(["This photo shows doubt or confusion emotion."]))
    with pytest.raises(ValueError, match="placeholder"):
        class_prototypes(labels, template="no slot", encoder=encoder)


def test_safetensors_reader_reads_every_tensor(encoder):
    from emotion.models.joint.text_encoder import load_safetensors

    tensors = load_safetensors(resolve("minilm_l6_v2"))
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert tensors["embeddings.position_ids"].dtype == torch.int64
    torch.testing.assert_close(encoder.model.word_embeddings.weight, tensors["embeddings.word_embeddings.weight"])
