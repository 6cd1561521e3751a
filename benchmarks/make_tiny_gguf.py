"""A tiny SD1-shaped UNet as a GGUF file, in the layout ComfyUI-GGUF's UnetLoaderGGUF reads.

    .venv/bin/python benchmarks/make_tiny_gguf.py MODELS_DIR [--seed 0] [--qtype Q8_0]
    .venv/bin/python benchmarks/make_tiny_gguf.py MODELS_DIR --run PACKS_DIR   # + sample both, compare

Writes under MODELS_DIR (a models root: pass it as --models-directory to diffgraph):

- ``checkpoints/tiny_sd1.safetensors``: a tiny random SD1 checkpoint (text encoder, VAE, UNet; the test
  factories' model) - the CLIP and VAE of the workflows;
- ``unet/tiny_sd1_unet_<QTYPE>.gguf``: that checkpoint's UNet, quantized;
- ``diffusion_models/tiny_sd1_unet_<QTYPE>_dequant.safetensors``: the GGUF's weights dequantized again
  (the same numbers a GGUF loader computes), for UNETLoader: the reference the GGUF path must match;
- ``workflows/gguf.json``, ``gguf_twin.json`` and ``gguf_unquantized.json``: API workflows sampling 64x64
  through UnetLoaderGGUF, through UNETLoader on the twin, and through the checkpoint's own (fp16) UNet.

The GGUF layout, as ComfyUI-GGUF's loader and its tools/convert.py expect it: ``general.architecture`` is
``sd1``; tensor names are the UNet's own keys (original layout, no ``model.diffusion_model.`` prefix);
one-dimensional and small (<= 1024 values) tensors are F32, the rest quantized; a tensor whose element
count divides by 256 but whose last dimension does not is stored as rows of 256 values with its real shape
in the ``comfy.gguf.orig_shape.<name>`` INT32 array (the converter's "shape fix" for SD-family models).
Numbers are stored in GGUF's reversed dimension order by the gguf package itself.

``--run PACKS_DIR`` builds a diffgraph runtime with PACKS_DIR as custom_nodes (it must hold ComfyUI-GGUF),
runs the three workflows and prints the largest pixel difference (0-255) of the GGUF image to the twin's
(must be <= 1: exit status 1 otherwise) and to the unquantized model's (what Q8_0 changes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SD1_CONTEXT = 768  # SD1's text width: the UNet's cross-attention input
SMALL_TENSOR = 1024  # at most this many values: kept in F32 (the converter's QUANTIZATION_THRESHOLD)
ROW = 256  # the converter's re-arranged row length
REARRANGE_MIN = 512  # ... for tensors of at least this many values


def tiny_checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    """Write the tiny SD1 checkpoint; return its UNet state dict (no prefix).

    The test factories' tiny SD1 model, except that the UNet's cross-attention width and the text
    encoder's width are SD1's 768: a UNet-only file (GGUF or diffusion_models/) says its family only
    through that width, in ComfyUI and here (32 would be no known family). One text layer keeps it small."""
    from safetensors.torch import save_file

    from engine.diffusion.checkpoints import diffusers_layout as dl
    from engine.diffusion.checkpoints.spec import SD1_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, ModelFamily
    from engine.diffusion.models.unet import UNetConfig
    from tests.factories.checkpoints import (
        CLIP_POSITIONS,
        clip_text_shapes,
        random_state_dict,
        tiny_family_parts,
        unet_shapes,
        vae_shapes,
    )

    _, vae_config, _ = tiny_family_parts(ModelFamily.SD1)
    unet = random_state_dict(unet_shapes(UNetConfig.tiny(context_dim=SD1_CONTEXT)), seed=seed)
    vae = random_state_dict(vae_shapes(vae_config), seed=seed + 1)
    clip = random_state_dict(clip_text_shapes(SD1_CONTEXT, 1), seed=seed + 2)
    full = {**dl.add_prefix(unet, UNET_PREFIX), **dl.add_prefix(vae, VAE_PREFIX)}
    body = {k[len("text_model.") :]: v for k, v in clip.items() if k.startswith("text_model.")}
    full.update(dl.add_prefix(body, SD1_CLIP_PREFIX))
    full[SD1_CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(CLIP_POSITIONS).unsqueeze(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in full.items()},
        str(path),
        metadata={"format": "pt"},
    )
    return {k: v.half().float() for k, v in unet.items()}  # the numbers the file holds


def stored_form(name: str, value: np.ndarray, qtype: Any) -> tuple[np.ndarray, Any, tuple[int, ...] | None]:
    """(array to store, its GGML type, original shape when re-arranged) for one tensor."""
    import gguf

    if value.ndim <= 1 or value.size <= SMALL_TENSOR:
        return value.astype(np.float32), gguf.GGMLQuantizationType.F32, None
    orig = None
    if value.size >= REARRANGE_MIN and value.size % ROW == 0 and value.shape[-1] % ROW != 0:
        orig = tuple(int(d) for d in value.shape)
        value = value.reshape(value.size // ROW, ROW)
    try:
        return gguf.quants.quantize(value.astype(np.float32), qtype), qtype, orig
    except (gguf.QuantError, AttributeError):  # a row length the block size does not divide: F16 then
        f16 = gguf.GGMLQuantizationType.F16
        return gguf.quants.quantize(value.astype(np.float32), f16), f16, orig


def write_gguf(path: Path, unet: dict[str, torch.Tensor], qtype_name: str) -> dict[str, torch.Tensor]:
    """Write the GGUF; return the dequantized state dict (what a reader reconstructs from it)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    writer = gguf.GGUFWriter(path=None, arch="sd1")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_Q8_0 if qtype_name == "Q8_0" else gguf.LlamaFileType.MOSTLY_F16
    )
    twin: dict[str, torch.Tensor] = {}
    for name in sorted(unet):
        value = unet[name].float().numpy()
        data, stored_type, orig = stored_form(name, value, qtype)
        if orig is not None:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(orig))
        writer.add_tensor(name, data, raw_dtype=stored_type)
        back = gguf.quants.dequantize(data, stored_type).reshape(value.shape)
        twin[name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return twin


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def workflow(loader: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name="tiny_sd1.safetensors"),
        "2": loader,
        "3": node("CLIPTextEncode", text="a red house", clip=["1", 1]),
        "4": node("CLIPTextEncode", text="", clip=["1", 1]),
        "5": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "6": node(
            "KSampler", model=["2", 0], positive=["3", 0], negative=["4", 0], latent_image=["5", 0],
            seed=1, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0,
        ),
        "7": node("VAEDecode", samples=["6", 0], vae=["1", 2]),
        "8": node("SaveImage", images=["7", 0], filename_prefix=prefix),
    }  # fmt: skip


def make(models: Path, seed: int, qtype: str) -> tuple[Path, Path, Path]:
    from safetensors.torch import save_file

    unet = tiny_checkpoint(models / "checkpoints" / "tiny_sd1.safetensors", seed)
    gguf_name = f"tiny_sd1_unet_{qtype}.gguf"
    twin = write_gguf(models / "unet" / gguf_name, unet, qtype)
    twin_name = f"tiny_sd1_unet_{qtype}_dequant.safetensors"
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(twin, str(models / "diffusion_models" / twin_name), metadata={"format": "pt"})
    flows = models / "workflows"
    flows.mkdir(parents=True, exist_ok=True)
    gguf_flow, twin_flow, own_flow = (
        flows / "gguf.json",
        flows / "gguf_twin.json",
        flows / "gguf_unquantized.json",
    )
    gguf_flow.write_text(json.dumps(workflow(node("UnetLoaderGGUF", unet_name=gguf_name), "gguf"), indent=1))
    twin_loader = node("UNETLoader", unet_name=twin_name, weight_dtype="default")
    twin_flow.write_text(json.dumps(workflow(twin_loader, "gguf_twin"), indent=1))
    own = workflow(node("CheckpointLoaderSimple", ckpt_name="tiny_sd1.safetensors"), "gguf_unquantized")
    own_flow.write_text(json.dumps(own, indent=1))  # the checkpoint's own UNet: what quantizing changed
    largest = max(abs(float((twin[k] - unet[k].float()).abs().max())) for k in unet)
    print(f"wrote {models}: {len(unet)} tensors; largest quantization error {largest:.4g}")
    return gguf_flow, twin_flow, own_flow


def run_both(models: Path, packs: Path, flows: tuple[Path, Path, Path]) -> int:
    """Sample through the GGUF loader, the dequantized twin and the unquantized UNet; print the pixel
    differences (the GGUF path must match the twin; the unquantized one shows the test can tell)."""
    import tempfile

    from engine.folders import Folders
    from engine.graph.loading import load_workflow_file
    from engine.graph.validate import validate_workflow
    from engine.runtime import build_runtime

    with tempfile.TemporaryDirectory(prefix="gguf-") as base:
        folders = Folders.create(base, models_directory=models)
        folders.custom_nodes = [packs.resolve()]
        runtime = build_runtime(folders)
        images = []
        for flow in flows:
            validated = validate_workflow(load_workflow_file(flow, runtime.registry), runtime.registry)
            result = runtime.executor.execute(validated)
            if result.errors:
                print(f"{flow.name}: failed: {result.errors[0]}\n{result.errors[0].traceback_text}")
                return 1
            images.append(result.output("7"))
    diff = (images[0].float() - images[1].float()).abs().max().item() * 255
    quantized = (images[0].float() - images[2].float()).abs().max().item() * 255
    print(f"GGUF vs dequantized twin: largest pixel difference {diff:.3f} / 255")
    print(f"GGUF vs the unquantized UNet: largest pixel difference {quantized:.3f} / 255")
    return 0 if diff <= 1.0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, help="models root to write into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qtype", default="Q8_0", choices=["Q8_0", "Q4_0", "Q5_0", "F16"])
    parser.add_argument(
        "--run", type=Path, metavar="PACKS_DIR", help="also sample both workflows and compare"
    )
    args = parser.parse_args(argv)
    flows = make(args.models.resolve(), args.seed, args.qtype)
    return run_both(args.models.resolve(), args.run, flows) if args.run else 0


if __name__ == "__main__":
    sys.exit(main())
