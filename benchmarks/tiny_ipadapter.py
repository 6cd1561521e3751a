"""ComfyUI_IPAdapter_plus's attention patch on diffgraph's UNet, with a tiny random IPAdapter.

    .venv/bin/python benchmarks/tiny_ipadapter.py MODELS_DIR PACKS_DIR

PACKS_DIR must hold ComfyUI_IPAdapter_plus (it imports torchvision: put a working one on the path). Writes
under MODELS_DIR the tiny SD1 checkpoint of make_tiny_gguf.py, ``ipadapter/tiny_ipadapter.safetensors`` and
``input/tiny.ipadpt`` and ``tiny_neg.ipadpt`` (image embeddings, as IPAdapterSaveEmbeds writes them; with a
negative one IPAdapterEmbeds needs no CLIP vision model, which diffgraph does not have), then samples 64x64 three
times with the same seed: plain, through IPAdapterEmbeds at weight 0 and at weight 1. The pack's own code
patches the UNet (``set_model_attn2_replace`` keys ("input", 1), ("output", 3), ...) and computes its
extra cross-attention in the replacement; diffgraph's UNet must call it at the blocks ComfyUI calls it at.
Passes (exit 0) when weight 0 gives the plain image (the patch adds nothing) and weight 1 does not.

The IPAdapter file is the plain (non-"plus") layout: ``image_proj.proj`` (clip embedding -> 4 tokens of 768)
and ``image_proj.norm``, and 16 ``ip_adapter.<2n+1>.to_k_ip/to_v_ip`` layers (768 -> 32, the tiny UNet's
attention width at the blocks that exist; SD1's 16 cross-attention blocks, of which the tiny UNet has two of
the ones IPAdapter patches: input 1 and output 3).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from make_tiny_gguf import SD1_CONTEXT, node, tiny_checkpoint
from make_tiny_gguf import workflow as tiny_workflow

EMBED_DIM = 32  # the "CLIP vision" image embedding width the tiny IPAdapter projects
TOKENS = 4  # extra context tokens of a plain IPAdapter
INNER = 32  # the tiny UNet's attention width at input block 1 and output block 3


def write_ipadapter(path: Path, seed: int) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {
        "image_proj.proj.weight": torch.randn(SD1_CONTEXT * TOKENS, EMBED_DIM, generator=g) / EMBED_DIM**0.5,
        "image_proj.proj.bias": torch.zeros(SD1_CONTEXT * TOKENS),
        "image_proj.norm.weight": torch.ones(SD1_CONTEXT),
        "image_proj.norm.bias": torch.zeros(SD1_CONTEXT),
    }
    for n in range(16):
        for kind in ("to_k_ip", "to_v_ip"):
            sd[f"ip_adapter.{2 * n + 1}.{kind}.weight"] = torch.randn(INNER, SD1_CONTEXT, generator=g) / (
                4 * SD1_CONTEXT**0.5
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt"})


def workflow(weight: float | None) -> dict[str, Any]:
    """make_tiny_gguf's txt2img graph; its model loader (node 2) is the checkpoint's own UNet, or that UNet
    through IPAdapterEmbeds at `weight`."""
    if weight is None:
        return tiny_workflow(
            node("CheckpointLoaderSimple", ckpt_name="tiny_sd1.safetensors"), "ipadapter_off"
        )
    flow = tiny_workflow(
        node(
            "IPAdapterEmbeds", model=["1", 0], ipadapter=["10", 0], pos_embed=["11", 0], neg_embed=["13", 0],
            weight=weight, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only",
        ),
        f"ipadapter_{weight}",
    )  # fmt: skip
    flow["10"] = node("IPAdapterModelLoader", ipadapter_file="tiny_ipadapter.safetensors")
    flow["11"] = node("IPAdapterLoadEmbeds", embeds="tiny.ipadpt")
    flow["13"] = node("IPAdapterLoadEmbeds", embeds="tiny_neg.ipadpt")  # with it no CLIP vision is needed
    return flow


def run(models: Path, packs: Path, inputs: Path) -> list[torch.Tensor]:
    from engine.folders import Folders
    from engine.graph.loading import workflow_from_document
    from engine.graph.validate import validate_workflow
    from engine.runtime import build_runtime

    with tempfile.TemporaryDirectory(prefix="ipadapter-") as base:
        folders = Folders.create(base, models_directory=models, input_directory=inputs)
        folders.custom_nodes = [packs.resolve()]
        runtime = build_runtime(folders)
        images = []
        for weight in (None, 0.0, 1.0):
            flow = workflow_from_document(workflow(weight), runtime.registry)
            result = runtime.executor.execute(validate_workflow(flow, runtime.registry))
            if result.errors:
                raise SystemExit(f"weight {weight}: {result.errors[0]}\n{result.errors[0].traceback_text}")
            images.append(result.output("7"))
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path)
    parser.add_argument("packs", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models = args.models.resolve()
    tiny_checkpoint(models / "checkpoints" / "tiny_sd1.safetensors", args.seed)
    write_ipadapter(models / "ipadapter" / "tiny_ipadapter.safetensors", args.seed + 5)
    inputs = models / "input"
    inputs.mkdir(parents=True, exist_ok=True)
    torch.save(
        torch.randn(1, EMBED_DIM, generator=torch.Generator().manual_seed(args.seed + 6)),
        inputs / "tiny.ipadpt",
    )
    torch.save(torch.zeros(1, EMBED_DIM), inputs / "tiny_neg.ipadpt")
    plain, zero, full = run(models, args.packs, inputs)
    off = (zero.float() - plain.float()).abs().max().item() * 255
    on = (full.float() - plain.float()).abs().max().item() * 255
    print(f"IPAdapter weight 0 vs no IPAdapter: largest pixel difference {off:.3f} / 255 (must be ~0)")
    print(f"IPAdapter weight 1 vs no IPAdapter: largest pixel difference {on:.3f} / 255 (must be > 0)")
    return 0 if off <= 0.5 and on > 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
