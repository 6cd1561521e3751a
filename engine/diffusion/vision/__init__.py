"""Image encoders and what conditions on them: CLIP / SigLIP vision towers (``clip_vision``, ``loading``,
``preprocess``), style models that turn their tokens into prompt tokens (``style``) and unCLIP's noise
augmentation of image embeddings (``unclip``)."""
