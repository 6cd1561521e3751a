"""MODEL / CLIP / VAE handles for SD3 / SD3.5 and FLUX.1 files, registered with the model manager.

The same handle types as the UNet families travel on the sockets, so KSampler, CLIPTextEncode, VAEDecode
and the other nodes use them unchanged:

- MODEL: `FlowModelHandle`, a `ModelHandle` over the transformer behind the UNet call contract
  (`flow_models.TransformerAdapter`), with the family's flow `ModelSampling` (SD3 shift 3.0, Flux dev
  `ModelSamplingFlux` 1.15, schnell unshifted), its conditioning builder (SD3: the pooled CLIP vector;
  Flux: pooled CLIP-L plus the entry's "guidance"), 16 latent channels and 16-channel previews;
- CLIP: `FlowClipHandle` over `SD3TextStack` / `FluxTextStack`;
- VAE: the ordinary `VAEHandle` over the 16-channel VAE (its scale and shift live in the VAE's config).

The T5 vocabulary is looked up as `engine.diffusion.text.t5_tokenizer.find_t5_vocabulary` describes (a diffusers
folder's `tokenizer_3/` or `tokenizer_2/`, beside the T5 file, the text-encoder folders' `t5_tokenizer/`, ...). When it is missing the CLIP still loads, and
encoding a prompt raises the error that names the file to put where: a checkpoint's MODEL and VAE stay
usable without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.diffusion.checkpoints import flow_text
from engine.diffusion.checkpoints.flow_detect import is_flow_state_dict
from engine.diffusion.checkpoints.flow_diffusers import is_flow_diffusers_folder, load_flow_diffusers_folder
from engine.diffusion.checkpoints.flow_loader import dequantize_fp8, load_flow_checkpoint
from engine.diffusion.checkpoints.io import (
    SAFETENSORS_SUFFIXES,
    CheckpointError,
    read_safetensors_header,
    read_state_dict,
)
from engine.diffusion.sampling.flow_models import LATENT_CHANNELS, flow_model_parts
from engine.diffusion.sampling.flux_inputs import FluxConcat
from engine.diffusion.sampling.model_sampling import (
    ModelSamplingFlow,
    ModelSamplingFlux,
    auraflow_model_sampling,
    flux_shift_for_resolution,
    sd3_model_sampling,
)
from engine.diffusion.sampling.preview import latent_to_rgb
from engine.diffusion.text.embeddings import EmbeddingLibrary
from engine.diffusion.text.t5_tokenizer import T5TokenizerFilesError, find_t5_vocabulary, load_t5_tokenizer
from engine.handles.clip import ClipHandle
from engine.handles.flow_clip import FlowClipHandle
from engine.handles.model import ModelHandle
from engine.handles.vae import VAEHandle
from engine.memory.dtypes import FP8_DTYPES, ModelRole, choose_dtype, store_weights_as
from engine.memory.manager import ModelManager
from engine.memory.weight_patches import GrowPatch

PathLike = str | os.PathLike[str]
# UNETLoader's weight_dtype choices (ComfyUI's names) -> the storage dtype of the transformer's matmuls.
WEIGHT_DTYPES = {
    "default": None,
    "fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None),
    "fp8_e4m3fn_fast": getattr(torch, "float8_e4m3fn", None),
    "fp8_e5m2": getattr(torch, "float8_e5m2", None),
}


class FlowModelHandle(ModelHandle):
    """A MODEL handle over an SD3 / FLUX.1 transformer (see the module docstring)."""

    @property
    def transformer(self) -> Any:
        return self.unet.model

    def diffusion_model(self) -> Any:
        """The denoiser; for Flux Fill / Canny / Depth (more input than latent channels) with the extra
        channels built from the conditioning (`flux_inputs.FluxConcat`)."""
        dm = super().diffusion_model()
        cfg = self.transformer.config
        channels = self._input_channels()
        if self.family == "flux" and channels > cfg.out_channels:
            dm.variant = FluxConcat(channels, cfg.out_channels, self.adm_builder, dm.latent_format)
        return dm

    def _input_channels(self) -> int:
        """The latent channels ``img_in`` takes once patched: a BFL control LoRA (FLUX.1 Canny / Depth) widens
        it for the concatenated control latent (ComfyUI reads the patched weight's width the same way)."""
        cfg = self.transformer.config
        for _, patch, _ in self.patcher.patches.get("model.img_in.weight", []):
            if isinstance(patch, GrowPatch):
                return patch.shape[1] // cfg.patch_size**2
        return int(cfg.in_channels)

    def preview_image(self, x0: torch.Tensor, max_side: int = 512) -> Any:
        from PIL import Image

        rgb = latent_to_rgb(x0[:1].detach().to("cpu", torch.float32), self.family)[0]
        image = Image.fromarray((rgb * 255.0).round().to(torch.uint8).numpy(), "RGB")
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side))
        return image


# ---- model sampling for the ModelSamplingSD3 / AuraFlow / Flux nodes --------------------------------


def sd3_sampling(shift: float) -> ModelSamplingFlow:
    """ModelSamplingSD3: shifted flow sigmas, timesteps = sigma * 1000."""
    return sd3_model_sampling(shift)


def auraflow_sampling(shift: float) -> ModelSamplingFlow:
    """ModelSamplingAuraFlow: shifted flow sigmas, timesteps = sigma."""
    return auraflow_model_sampling(shift)


def flux_sampling(width: int, height: int, *, base_shift: float, max_shift: float) -> ModelSamplingFlow:
    """ModelSamplingFlux: FLUX.1's exponential shift with mu from the image size."""
    return ModelSamplingFlux(
        flux_shift_for_resolution(width, height, base_shift=base_shift, max_shift=max_shift)
    )


class MissingT5Tokenizer:
    """Stands in for the T5 tokenizer when its vocabulary is missing: using it raises the error that
    says which file to put where (loading a checkpoint for its MODEL / VAE does not need it)."""

    def __init__(self, message: str) -> None:
        self.message = message

    def encode(self, text: str) -> list[int]:
        raise T5TokenizerFilesError(self.message)

    def __call__(self, text: str, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}


def find_t5_tokenizer(
    *,
    text_encoder_file: PathLike | None = None,
    text_encoder_folders: Sequence[PathLike] = (),
    diffusers_folder: PathLike | None = None,
) -> Any:
    try:
        found = find_t5_vocabulary(
            diffusers_folder=diffusers_folder,
            text_encoder_file=text_encoder_file,
            text_encoder_folders=text_encoder_folders,
        )
    except T5TokenizerFilesError as e:
        return MissingT5Tokenizer(str(e))
    return load_t5_tokenizer(found)


def is_flow_file(path: PathLike) -> bool:
    """Whether a (safetensors) file holds an SD3/SD3.5 or FLUX.1 transformer; only the header is read."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() not in SAFETENSORS_SUFFIXES or not p.is_file():
        return False
    # Detection looks at key names only (`in` tests), so the header's entries stand in for tensors.
    return is_flow_state_dict(read_safetensors_header(p).tensors)  # type: ignore[arg-type]


def _storage(manager: ModelManager, role: ModelRole) -> torch.dtype:
    return choose_dtype(manager.device_info, role).storage


def _transformer_loader(path: Path, prefix: str) -> Callable[[], Mapping[str, torch.Tensor]] | None:
    """Re-reads the transformer's weights (dequantizing fp8-scaled ones) under the adapter's names."""
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return None

    def keep(key: str) -> bool:
        return key.startswith(prefix) and not key.startswith(("text_encoders.", "first_stage_model.", "vae."))

    def load() -> Mapping[str, torch.Tensor]:
        sd = dequantize_fp8(read_state_dict(path, keys_filter=keep, mmap=True))
        return {"model." + k[len(prefix) :]: v for k, v in sd.items()}

    return load


def make_flow_model_handle(
    transformer: Any,
    *,
    manager: ModelManager,
    name: str,
    loader: Callable[[], Mapping[str, torch.Tensor]] | None = None,
    storage: torch.dtype | None = None,
) -> FlowModelHandle:
    """Register an MMDiT / Flux model; `storage` (an fp8 dtype) keeps its matmul weights in that dtype,
    cast per layer to the weights' current dtype when run."""
    network, sampling, adm = flow_model_parts(transformer)
    compute = None
    if storage is not None:
        compute = next(p.dtype for p in transformer.parameters() if p.is_floating_point())
        store_weights_as(network, storage)
    managed = manager.register(network, name=f"{name} (transformer)", loader=loader, compute_dtype=compute)
    handle = FlowModelHandle(
        manager.patcher(managed),
        manager=manager,
        model_sampling=sampling,
        family="flux" if network.flux else "sd3",
        latent_channels=LATENT_CHANNELS,
        name=name,
    )
    handle.adm_builder = adm
    return handle


def _clip_handle(
    stack: Any, *, manager: ModelManager, name: str, embeddings_folder: PathLike | None
) -> FlowClipHandle:
    managed = manager.register(stack, name=f"{name} (text encoders)")
    library = EmbeddingLibrary(embeddings_folder) if embeddings_folder is not None else None
    return FlowClipHandle(manager.patcher(managed), manager=manager, embeddings=library, name=name)


def load_flow_checkpoint_handles(
    path: PathLike,
    *,
    manager: ModelManager,
    embeddings_folder: PathLike | None = None,
    text_encoder_folders: Sequence[PathLike] = (),
    want_vae: bool = True,
    want_clip: bool = True,
) -> tuple[FlowModelHandle, FlowClipHandle | None, VAEHandle | None]:
    """(MODEL, CLIP, VAE) of an SD3/SD3.5 or FLUX.1 file; CLIP / VAE are None when the file lacks them."""
    from engine.handles.loading import _file_loader, make_vae_handle  # loading imports this module

    p = Path(path)
    components = ["unet"] + (["text"] if want_clip else []) + (["vae"] if want_vae else [])
    text_dtype = _storage(manager, ModelRole.TEXT_ENCODER)
    dtypes = {
        "unet": _storage(manager, ModelRole.UNET),
        "vae": _storage(manager, ModelRole.VAE),
        "text": text_dtype,
    }
    folder = is_flow_diffusers_folder(p)
    if folder:
        ck = load_flow_diffusers_folder(p, dtypes=dtypes, components=components)
    else:
        ck = load_flow_checkpoint(p, dtypes=dtypes, components=components)
    spec = ck.spec
    model = make_flow_model_handle(
        ck.transformer, manager=manager, name=p.name, loader=_transformer_loader(p, spec.transformer_prefix)
    )
    clip = vae = None
    if ck.text_state_dicts:
        towers = flow_text.build_towers(ck.text_state_dicts, dtype=text_dtype, path=str(p))
        tokenizer = None
        if "t5xxl" in towers:
            tokenizer = find_t5_tokenizer(
                diffusers_folder=p if folder else None,
                text_encoder_file=None if folder else p,
                text_encoder_folders=text_encoder_folders,
            )
        if spec.family == "sd3":
            stack: Any = flow_text.build_sd3_stack(towers, t5_tokenizer=tokenizer)
        else:
            stack = flow_text.build_flux_stack(towers, t5_tokenizer=tokenizer, path=str(p))
        clip = _clip_handle(stack, manager=manager, name=p.name, embeddings_folder=embeddings_folder)
    if ck.vae is not None and spec.vae_prefix is not None:
        vae = make_vae_handle(
            ck.vae, manager=manager, name=p.name, loader=_file_loader(p, spec.vae_prefix, ck.vae)
        )
        model.vae_downscale = vae.downscale
    return model, clip, vae


def load_flow_unet_handle(
    path: PathLike, *, manager: ModelManager, weight_dtype: str = "default"
) -> FlowModelHandle:
    """UNETLoader for a transformer file (models/diffusion_models): `weight_dtype` "fp8_e4m3fn" /
    "fp8_e5m2" keep the matmul weights in that fp8 dtype (computed in the default dtype, layer by layer);
    "fp8_e4m3fn_fast" is stored the same way (fp8 matmuls are not used)."""
    p = Path(path)
    storage = fp8_storage_for(weight_dtype)
    ck = load_flow_checkpoint(p, dtypes={"unet": _storage(manager, ModelRole.UNET)}, components=("unet",))
    return make_flow_model_handle(
        ck.transformer,
        manager=manager,
        name=p.name,
        loader=_transformer_loader(p, ck.spec.transformer_prefix),
        storage=storage,
    )


def fp8_storage_for(weight_dtype: str) -> torch.dtype | None:
    """The storage dtype UNETLoader's `weight_dtype` asks for (None: the default)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    storage = WEIGHT_DTYPES[weight_dtype]
    if weight_dtype != "default" and (storage is None or storage not in FP8_DTYPES):
        raise ValueError(f"weight_dtype {weight_dtype!r}: this torch build has no float8 dtypes")
    return storage


# ---- standalone text encoders (CLIPLoader, DualCLIPLoader, TripleCLIPLoader) -------------------------

FLOW_CLIP_TYPES = ("sd3", "flux", "sdxl")


def _read_text_encoder(p: Path, dtype: torch.dtype) -> tuple[str, dict[str, torch.Tensor]]:
    sd = flow_text.strip_text_prefix(read_state_dict(p))
    sd = dequantize_fp8(sd, lambda _key: dtype)
    kind = flow_text.text_kind(sd)
    if kind is None:
        sample = ", ".join(sorted(sd)[:4])
        raise CheckpointError(
            p,
            "not a text encoder this loader knows: expected CLIP ('text_model.embeddings.token_embedding.weight') "
            f"or T5 ('{flow_text.T5_MARKER}') keys; keys start: {sample}",
        )
    return kind, sd


def load_text_encoders_handle(
    paths: Sequence[PathLike],
    *,
    manager: ModelManager,
    clip_type: str,
    embeddings_folder: PathLike | None = None,
    text_encoder_folders: Sequence[PathLike] = (),
) -> ClipHandle:
    """CLIP / T5 files combined as `clip_type` prescribes: "sd3" any of CLIP-L, CLIP-G, T5-XXL; "flux"
    CLIP-L + T5-XXL; "sdxl" CLIP-L + CLIP-G. Each file's kind comes from its keys and shapes
    (`flow_text`), so the order of the files does not matter."""
    ps = [Path(x) for x in paths]
    if clip_type not in FLOW_CLIP_TYPES:
        raise CheckpointError(ps[0], f"text-encoder type {clip_type!r} is not one of {FLOW_CLIP_TYPES}")
    dtype = _storage(manager, ModelRole.TEXT_ENCODER)
    read = [_read_text_encoder(p, dtype) for p in ps]
    parts = flow_text.assign_clip_kinds(read)
    files = dict(zip((k for k, _ in parts), ps, strict=True))
    kinds = [k for k, _ in parts]
    for kind in set(kinds):
        if kinds.count(kind) > 1 or kind == "clip":
            named = ", ".join(p.name for (k, _), p in zip(parts, ps, strict=True) if k == kind)
            raise CheckpointError(
                ps[0], f"more than one {kind} text encoder given ({named}); give each kind once"
            )
    where = ", ".join(p.name for p in ps)
    if clip_type == "sdxl":
        return _sdxl_clip(dict(parts), manager=manager, where=where, embeddings_folder=embeddings_folder)
    towers = flow_text.build_towers(dict(parts), dtype=dtype, path=where)
    tokenizer = None
    if "t5xxl" in towers:
        tokenizer = find_t5_tokenizer(
            text_encoder_file=files["t5xxl"], text_encoder_folders=text_encoder_folders
        )
    if clip_type == "sd3":
        stack: Any = flow_text.build_sd3_stack(towers, t5_tokenizer=tokenizer)
    else:
        stack = flow_text.build_flux_stack(towers, t5_tokenizer=tokenizer, path=where)
    return _clip_handle(stack, manager=manager, name=where, embeddings_folder=embeddings_folder)


def _sdxl_clip(
    parts: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    manager: ModelManager,
    where: str,
    embeddings_folder: PathLike | None,
) -> ClipHandle:
    """DualCLIPLoader type sdxl: SDXL's CLIP-L (hidden states) and CLIP-G (hidden states, pooled)."""
    from engine.diffusion.checkpoints.clip_text import build_clip_text_model
    from engine.diffusion.text.encoder import SDTextEncoder
    from engine.handles.loading import make_clip_handle

    if set(parts) != {"clip_l", "clip_g"}:
        raise CheckpointError(where, f"type sdxl needs a CLIP-L and a CLIP-G file; got {sorted(parts)}")
    dtype = _storage(manager, ModelRole.TEXT_ENCODER)
    clip_l = build_clip_text_model(dict(parts["clip_l"]), dtype=dtype)
    clip_g = flow_text.build_clip(parts["clip_g"], "clip_g", dtype=dtype, path=where)
    encoder = SDTextEncoder.for_sdxl(clip_l, clip_g)
    return make_clip_handle(encoder, manager=manager, name=where, embeddings_folder=embeddings_folder)
