"""LoRA training inside a workflow (ComfyUI's TrainLoraNode family, issue 18).

Modules, lowest first:

- ``choices``: the combo lists the training nodes publish (input sub-folders, LoRA files); torch-free, so
  the runtime can register them without the model stack.
- ``dataset``: image folders (kohya ``<repeats>_<name>`` sub-folders, ``.txt`` captions) into IMAGE batches.
- ``adapters``: trainable LoRA / LoHa modules hooked onto our UNet's Linear and Conv2d layers.
- ``kohya``: module names and the kohya-ss ``.safetensors`` layout (with ``ss_*`` metadata) of the result.
- ``loop``: the training loop (noise schedule and prediction type of the model, loss, optimizer,
  gradient accumulation and checkpointing, progress and interrupt).
- ``loss_graph``: the loss curve as an image.

Nothing here imports the graph or execution layers: progress and interrupt reach the loop as callbacks.
"""
