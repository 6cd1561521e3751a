"""Tokenizers, prompt weighting, text conditioning (CLIP and T5 stacks) and textual-inversion embeddings.

Modules (import them directly; this package imports nothing heavy):

- ``tokenizer``: ``load_clip_tokenizer`` / ``ClipTokenizerLoader`` (BPE vocabulary from ``openai-clip``);
- ``prompt_weights``: ``(word:1.2)`` syntax, ``embedding:name`` references, 77-token chunking;
- ``encoder``: ``SDTextEncoder`` (per-family conditioning, clip skip, weighting, pooled output);
- ``embeddings``: ``EmbeddingLibrary`` (textual inversion files);
- ``t5``: the T5 v1.1 encoder model (T5-XXL for SD3 and Flux);
- ``t5_tokenizer``: ``find_t5_vocabulary`` / ``load_t5_tokenizer`` (T5 SentencePiece vocabulary on disk);
- ``t5_encoder``: ``T5TextEncoder`` (T5 prompt rows, weighting, padding, attention mask);
- ``sd3_stack``: ``SD3TextStack`` (CLIP-L + CLIP-G + T5-XXL, any of them optional);
- ``flux_stack``: ``FluxTextStack`` (CLIP-L pooled + T5-XXL context).

The CLIP text towers themselves are ``transformers`` models built from checkpoint weights by
``engine.diffusion.checkpoints.clip_text``.
"""
