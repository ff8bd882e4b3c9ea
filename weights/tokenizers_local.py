"""Tokenizers built locally, offline: LLaMA's SentencePiece, CLIP's BPE and RoBERTa's BPE at toy
vocabulary sizes, loaded through the same transformers classes as the released ones."""
from __future__ import annotations

import gzip
import importlib.util
import io
from pathlib import Path

import sentencepiece as spm
from tokenizers import ByteLevelBPETokenizer
from transformers import CLIPTokenizer, LlamaTokenizer, RobertaTokenizer

from models.signals import added_tokens


def llama_tokenizer(corpus: list[str], out_dir: Path, vocab_size: int = 512) -> LlamaTokenizer:
    """A byte-fallback BPE SentencePiece model (unk 0, bos 1, eos 2) plus NExT-GPT's added tokens,
    saved in `out_dir` as the release ships its tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        user_defined_symbols=["###"],  # one piece, like LLaMA's id 835: the turn separator
        hard_vocab_limit=False, num_threads=1, minloglevel=2,  # single thread: the same model every time
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    tok = LlamaTokenizer.from_pretrained(str(out_dir))
    tok.add_tokens(added_tokens())
    tok.save_pretrained(str(out_dir))
    return LlamaTokenizer.from_pretrained(str(out_dir))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clip_tokenizer(out_dir: Path, num_merges: int = 1000) -> CLIPTokenizer:
    """CLIP's real vocabulary, truncated to its first `num_merges` merges (from ImageBind's copy)."""
    spec = importlib.util.find_spec("imagebind")
    bpe_path = Path(spec.submodule_search_locations[0]) / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : num_merges + 1]]
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tok.save_pretrained(str(out_dir))
    return CLIPTokenizer.from_pretrained(str(out_dir))


def roberta_tokenizer(corpus: list[str], out_dir: Path, vocab_size: int = 400) -> RobertaTokenizer:
    """A byte-level BPE trained on `corpus`, in RoBERTa's form (CLAP's text tokenizer)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(out_dir))
    tok = RobertaTokenizer(vocab=str(out_dir / "vocab.json"), merges=str(out_dir / "merges.txt"), model_max_length=77)
    tok.save_pretrained(str(out_dir))
    return RobertaTokenizer.from_pretrained(str(out_dir))
