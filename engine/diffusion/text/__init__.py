"""CLIP tokenizer, prompt weighting, text-encoder models and textual-inversion embeddings.

Modules (import them directly; this package imports nothing heavy):

- ``tokenizer``: ``load_clip_tokenizer`` / ``ClipTokenizerLoader`` (BPE vocabulary from ``openai-clip``);
- ``prompt_weights``: ``(word:1.2)`` syntax, ``embedding:name`` references, 77-token chunking;
- ``clip_models``: HF/OpenCLIP state dicts -> ``transformers`` CLIP text models;
- ``encoder``: ``SDTextEncoder`` (per-family conditioning, clip skip, weighting, pooled output);
- ``embeddings``: ``EmbeddingLibrary`` (textual inversion files).
"""
