"""`diffgraph serve --preview-method`: ComfyUI's choices, and the runtime's previewer built from it."""

from __future__ import annotations

import pytest

from engine.cli import build_parser, runtime_from_args
from engine.execution.context import PREVIEWER


@pytest.mark.parametrize("method", ["auto", "latent2rgb", "taesd", "none"])
def test_serve_accepts_comfyuis_preview_methods(method):
    assert build_parser().parse_args(["serve", "--preview-method", method]).preview_method == method


def test_serve_defaults_to_auto_and_refuses_other_methods(capsys):
    assert build_parser().parse_args(["serve"]).preview_method == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--preview-method", "fast"])
    assert "invalid choice" in capsys.readouterr().err


def test_the_runtime_previewer_follows_the_option(tmp_path):
    args = build_parser().parse_args(
        ["serve", "--base-directory", str(tmp_path), "--disable-custom-nodes", "--preview-method", "none"]
    )
    assert runtime_from_args(args).services[PREVIEWER].method == "none"
