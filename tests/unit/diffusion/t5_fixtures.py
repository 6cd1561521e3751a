"""Tiny T5 pieces for the text tests: a SentencePiece vocabulary trained on the spot and random T5 /
CLIP towers, in the real key layouts. Nothing is downloaded."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from engine.diffusion.checkpoints.clip_text import build_clip_text_model_with_projection
from engine.diffusion.text import t5 as t5_model
from tests.factories.checkpoints import clip_text_shapes, random_state_dict

SENTENCES = [
    "a photo of a cat sitting on a red chair",
    "a painting of a dog in the snow, oil on canvas",
    "the quick brown fox jumps over the lazy dog",
    "an astronaut riding a horse on the moon",
    "high quality, detailed, sharp focus, 4k",
    "a bowl of fruit on a wooden table",
]
SPM_VOCAB = 50  # + 100 extra ids
# Room for the 150 tokenizer ids; wider than the two tiny CLIP towers together, as T5-XXL (4096) is.
T5_TINY = t5_model.TINY.replace(vocab_size=160, d_model=96)


def train_spiece(path: Path, *, vocab_size: int = SPM_VOCAB) -> Path:
    """Train a unigram SentencePiece model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def hf_t5_encoder(seed: int = 0):
    """A random transformers ``T5EncoderModel`` of the tiny shape (the independent reference)."""
    from transformers import T5Config, T5EncoderModel

    c = T5_TINY
    config = T5Config(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_kv=c.d_kv,
        d_ff=c.d_ff,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def our_t5(reference) -> t5_model.T5EncoderModel:
    """Our T5 encoder holding the reference model's weights (same key names)."""
    model = t5_model.T5EncoderModel(T5_TINY)
    model.load_state_dict(reference.state_dict())
    return model.eval()


def clip_tower(width: int, *, projection: int, hidden_act: str, seed: int):
    """A random HF-layout CLIP text tower with a projection (``CLIPTextModelWithProjection``)."""
    sd = random_state_dict(clip_text_shapes(width, 2, projection=projection), seed=seed)
    return build_clip_text_model_with_projection(sd, hidden_act=hidden_act)
