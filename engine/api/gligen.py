"""GLIGEN for node code: load a GLIGEN file, add a text box to CONDITIONING (imports torch)."""

from __future__ import annotations

from engine.handles.gligen import GligenHandle, gligen_textbox, load_gligen

__all__ = ["GligenHandle", "gligen_textbox", "load_gligen"]
