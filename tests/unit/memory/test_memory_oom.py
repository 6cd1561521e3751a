"""OOM detection, retry after freeing, and the VAE tiled fallback with a simulated out-of-memory."""

from __future__ import annotations

import pytest
import torch

import engine.diffusion.models.vae as vae_mod
from engine.memory.oom import (
    InsufficientMemoryError,
    is_oom_error,
    run_with_oom_retry,
    vae_with_fallback,
)


class SmallMemoryVAE(vae_mod.AutoencoderKL):
    """The real AutoencoderKL on a 'device' that runs out of memory for inputs above `max_pixels`
    spatial positions, as a GPU would for a large untiled decode."""

    def __init__(self, *args, max_pixels: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_pixels = max_pixels
        self.calls: list[tuple[int, ...]] = []

    def _check(self, x: torch.Tensor) -> None:
        self.calls.append(tuple(x.shape))
        if x.shape[-1] * x.shape[-2] > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return super()._decode(z)

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return super()._moments(x)


def _vaes(max_pixels: int):
    torch.manual_seed(0)
    config = vae_mod.VAEConfig.tiny()
    plain = vae_mod.AutoencoderKL(config).eval()
    small = SmallMemoryVAE(config, max_pixels=max_pixels).eval()
    small.load_state_dict(plain.state_dict())
    return plain, small


def test_is_oom_error() -> None:
    assert is_oom_error(torch.OutOfMemoryError("x"))
    assert is_oom_error(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_oom_error(RuntimeError("shape mismatch"))
    assert not is_oom_error(ValueError("out of memory"))  # only RuntimeErrors carry the driver's message


@pytest.mark.slow
def test_decode_falls_back_to_tiled_and_is_close_to_untiled() -> None:
    plain, small = _vaes(max_pixels=32 * 32)  # a 48x48 latent does not fit, 24x24 tiles do
    # Raw latents of the magnitude real SD1 latents have (unit variance in the model's space).
    latents = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(1)) / 0.18215
    freed: list[bool] = []
    with torch.no_grad():
        expected = plain.decode(latents)
        tiled_reference = plain.decode(latents, tile_size=48, tile_overlap=16)  # tiny VAE: 2x scale
        out = vae_with_fallback(
            small, "decode", latents, tile_size=48, overlap=16, on_oom=lambda: freed.append(True)
        )
    assert freed == [True]  # other models were asked to make room before tiling
    assert small.calls[0] == (1, 4, 48, 48) and len(small.calls) > 2  # untiled attempt, then tiles
    assert torch.equal(out, tiled_reference)  # the fallback is the VAE's own tiled decode
    assert out.shape == expected.shape
    # Tiles see less context near their borders (and random weights make that worse than a trained VAE).
    assert (out - expected).abs().mean() < 0.1 * expected.abs().mean()
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_encode_falls_back_to_tiled() -> None:
    plain, small = _vaes(max_pixels=48 * 48)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = plain.encode(images)
        tiled_reference = plain.encode(images, tile_size=48, tile_overlap=32)
        out = vae_with_fallback(small, "encode", images, tile_size=48, overlap=32)
    assert torch.equal(out, tiled_reference)
    assert out.shape == expected.shape
    assert (out - expected).abs().mean() < 0.1 * expected.abs().mean()


def test_decode_gives_clear_error_when_even_tiles_do_not_fit() -> None:
    _, small = _vaes(max_pixels=4)
    with pytest.raises(InsufficientMemoryError, match="also with tiling") as err, torch.no_grad():
        vae_with_fallback(small, "decode", torch.zeros(1, 4, 16, 16), tile_size=16, overlap=8)
    assert "--lowvram" in str(err.value) and "free" in str(err.value)
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


def test_run_with_oom_retry_frees_and_retries_once() -> None:
    attempts: list[int] = []
    freed: list[int] = []

    def sample() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "latents"

    assert run_with_oom_retry(sample, on_oom=lambda: freed.append(1), what="sampling") == "latents"
    assert len(attempts) == 2 and freed == [1]

    def always() -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(InsufficientMemoryError, match="sampling"):
        run_with_oom_retry(always, what="sampling", needed_bytes=3 * 1024**3)

    def other() -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        run_with_oom_retry(other, on_oom=lambda: freed.append(2))
    assert freed == [1]  # not an OOM: nothing freed, no retry


def test_retry_with_manager_offloads_everything_but_the_kept_model() -> None:
    from torch import nn

    from engine.memory.devices import DeviceInfo
    from engine.memory.manager import Location, ModelManager

    manager = ModelManager(DeviceInfo.cpu(), device_budget_bytes=10**6)
    unet = manager.register(nn.Linear(8, 8), name="unet")
    vae = manager.register(nn.Linear(8, 8), name="vae")
    manager.load(vae)
    manager.load(unet)
    attempts: list[str] = []

    def sample() -> str:
        attempts.append(vae.location.value)
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "ok"

    assert run_with_oom_retry(sample, manager=manager, keep=[unet]) == "ok"
    assert attempts == ["device", "offloaded"]
    assert unet.location is Location.DEVICE
