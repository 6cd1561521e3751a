"""ComfyUI's other loader nodes, with its schemas: CheckpointLoader (with config), DiffusersLoader,
ImageOnlyCheckpointLoader and HypernetworkLoader (the CLIP vision, style model, unCLIP and PhotoMaker loaders
are in vision_conditioning.py, GLIGEN's in gligen.py).

The official frontend builds its model-folder-to-node mapping from these node types, so they must exist
even where diffgraph cannot run the model yet. The ones it cannot run (no SVD support in the engine
yet) fail when executed with an error that names
the node and what is missing; docs/nodes.md lists them. HypernetworkLoader runs (engine.handles.hypernetwork).
"""

from __future__ import annotations

from typing import Any

from engine import api
from engine.api import models

# ComfyUI's config list is the .yaml files of models/configs.
_CONFIG_EXTENSIONS = (".yaml",)
# A diffusers model folder is recognised by its model_index.json (ComfyUI lists the folders that have one).
_DIFFUSERS_INDEX = "model_index.json"


class UnsupportedModelError(NotImplementedError):
    """A loader node whose model kind diffgraph cannot run yet (the message names node and kind)."""


def _unsupported(node_type: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{node_type}: {what} are not supported by diffgraph yet, so this node cannot run; "
        "remove it from the workflow (see docs/nodes.md, 'Nodes that cannot run yet')"
    )


def _embeddings_folder(context: api.ExecutionContext) -> Any:
    roots = context.folders.roots("embeddings")
    return next((r for r in roots if r.is_dir()), roots[0] if roots else None)


def _load_checkpoint(path: Any, context: api.ExecutionContext) -> tuple[Any, Any, Any]:
    return models.load_checkpoint_handles(
        path, manager=context.models, embeddings_folder=_embeddings_folder(context)
    )


@api.node(
    "CheckpointLoader",
    category="advanced/loaders",
    display_name="Load Checkpoint With Config (DEPRECATED)",
    inputs=[
        api.Combo("config_name", api.FileChoices("configs", _CONFIG_EXTENSIONS)),
        api.Combo("ckpt_name", api.FileChoices("checkpoints")),
    ],
    outputs=[api.MODEL, api.CLIP, api.VAE],
    deprecated=True,
)
def checkpoint_loader(config_name: str, ckpt_name: str, context: api.ExecutionContext):
    """CheckpointLoaderSimple with a config file name. The config is not read: the architecture, the
    prediction type and the latent format come from detection on the checkpoint's weights, which
    decides what the LDM config would (docs/nodes.md)."""
    context.folders.full_path("configs", config_name)  # a missing config is still an error, as in ComfyUI
    return _load_checkpoint(context.folders.full_path("checkpoints", ckpt_name), context)


def _diffusers_folder(model_path: str) -> str:
    # Our choices are "<folder>/model_index.json"; ComfyUI's workflows name the folder itself.
    suffix = "/" + _DIFFUSERS_INDEX
    return model_path[: -len(suffix)] if model_path.endswith(suffix) else model_path


@api.node(
    "DiffusersLoader",
    category="advanced/loaders/deprecated",
    inputs=[api.Combo("model_path", api.FileChoices("diffusers", (_DIFFUSERS_INDEX,)))],
    outputs=[api.MODEL, api.CLIP, api.VAE],
)
def diffusers_loader(model_path: str, context: api.ExecutionContext):
    """A diffusers model folder (model_index.json, unet/, vae/, text_encoder/) from models/diffusers."""
    folder = context.folders.full_path("diffusers", _diffusers_folder(model_path))
    return _load_checkpoint(folder, context)


def _file_loader_node(
    node_type: str,
    *,
    category: str,
    display_name: str | None,
    file_input: str,
    kind: str,
    outputs: list[str],
    what: str,
    experimental: bool = False,
) -> api.NodeDefinition:
    """A loader of one file from models/<kind> whose model kind diffgraph cannot run yet: its file must
    exist (a missing one is reported as such), then it fails naming `what` is missing."""

    def load(context: api.ExecutionContext, **inputs: str):
        context.folders.full_path(kind, inputs[file_input])
        raise _unsupported(node_type, what)

    load.__doc__ = f"{what[0].upper()}{what[1:]} from models/{kind} (cannot run in diffgraph yet)."
    return api.node(
        node_type,
        category=category,
        display_name=display_name,
        inputs=[api.Combo(file_input, api.FileChoices(kind))],
        outputs=outputs,
        experimental=experimental,
    )(load)


image_only_checkpoint_loader = _file_loader_node(
    "ImageOnlyCheckpointLoader",
    category="loaders/video_models",
    display_name="Image Only Checkpoint Loader (img2vid model)",
    file_input="ckpt_name",
    kind="checkpoints",
    outputs=[api.MODEL, api.CLIP_VISION, api.VAE],
    what="image-to-video (Stable Video Diffusion) checkpoints",
)


@api.node(
    "HypernetworkLoader",
    category="loaders",
    inputs=[
        api.Input("model", api.MODEL),
        api.Combo("hypernetwork_name", api.FileChoices("hypernetworks")),
        api.Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
    ],
    outputs=[api.MODEL],
)
def hypernetwork_loader(model: Any, hypernetwork_name: str, strength: float, context: api.ExecutionContext):
    """A hypernetwork from models/hypernetworks: a clone of the model whose attention key / value inputs
    get ``k + strength * mlp_k(k)``, ``v + strength * mlp_v(v)`` (ComfyUI's formula)."""
    path = context.folders.full_path("hypernetworks", hypernetwork_name)
    return (models.apply_hypernetwork(model, path, strength),)


NODES = [
    checkpoint_loader,
    diffusers_loader,
    image_only_checkpoint_loader,
    hypernetwork_loader,
]
