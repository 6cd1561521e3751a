"""Parity: our T5 encoder vs transformers' T5EncoderModel loading our state dict (the single-file layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.models.t5.modeling_t5 import T5Attention as RefT5Attention

from engine.diffusion.text.t5 import T5_XXL, TINY, T5Config, T5EncoderModel, relative_position_bucket
from tests.factories.random_weights import randomize_

pytestmark = [pytest.mark.parity, pytest.mark.slow]


def reference_config(cfg: T5Config) -> transformers.T5Config:
    return transformers.T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    ours = T5EncoderModel(TINY).eval()
    randomize_(ours, 0, unit=("shared.weight", "relative_attention_bias"))
    path: Path = tmp_path_factory.mktemp("t5") / "t5xxl_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(path))
    ref = transformers.T5EncoderModel(reference_config(TINY)).eval()
    missing, unexpected = ref.load_state_dict(load_file(str(path)), strict=False)
    # The input embedding is tied to ``shared``: present once in the file, loaded into both.
    assert missing == ["encoder.embed_tokens.weight"] and not unexpected, (missing, unexpected)
    assert torch.equal(ref.get_input_embeddings().weight, ours.shared.weight)
    return ours, ref


def test_t5_buckets_match_transformers() -> None:
    distance = torch.arange(-300, 301)[None, :]
    for buckets, max_distance in ((32, 128), (16, 20)):
        ours = relative_position_bucket(distance, buckets, max_distance)
        ref = RefT5Attention._relative_position_bucket(distance, True, buckets, max_distance)
        assert torch.equal(ours, ref)


def test_t5_encoder_matches_transformers(pair) -> None:
    ours, ref = pair
    # 40 tokens: distances beyond the 8 exact buckets reach the logarithmic ones.
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(ids)
        b = ref(input_ids=ids).last_hidden_state
    assert a.shape == (2, 40, TINY.d_model)
    assert b.abs().max() > 0.1
    assert (a - b).abs().max().item() <= 1e-4


def test_t5_attention_mask_matches_transformers(pair) -> None:
    ours, ref = pair
    ids = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)
        b = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        unmasked = ours(ids)
    assert (a - b).abs().max().item() <= 1e-4
    assert (a[1] - unmasked[1]).abs().max() > 1e-3  # the mask changes the padded sample


def test_t5_loads_transformers_state_dict_with_tied_embedding(pair) -> None:
    ours, ref = pair
    sd = ref.state_dict()
    assert "encoder.embed_tokens.weight" in sd
    other = T5EncoderModel(TINY)
    other.load_state_dict(sd)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(other(ids), ours(ids))


def test_t5_fp16_residual_is_clamped_finite() -> None:
    model = T5EncoderModel(TINY).eval()
    randomize_(model, 3, unit=("shared.weight", "relative_attention_bias"))
    ffn = model.encoder.block[-1].layer[1].DenseReluDense
    seen: list[torch.Tensor] = []
    ffn.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        # Blow the last feed-forward output past the fp16 range (65504; the weights stay finite), as
        # T5-XXL does in a few channels; without the clamp the final norm turns the infs into NaNs.
        ffn.wi_1.weight.mul_(20)
        ffn.wo.weight.mul_(1e4)
        model.half()
        out = model(torch.arange(16)[None])
    assert torch.isinf(seen[0]).any()
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()


def test_t5_xxl_preset_has_the_transformers_layout() -> None:
    # Shapes only (meta tensors): google/t5-v1_1-xxl's encoder, 4.76 B parameters.
    with torch.device("meta"):
        ours = T5EncoderModel(T5_XXL)
        ref = transformers.T5EncoderModel(reference_config(T5_XXL))
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
    assert {k: v.shape for k, v in ours.state_dict().items()} == ref_shapes
    assert sum(p.numel() for p in ours.parameters()) == 4_762_310_656
