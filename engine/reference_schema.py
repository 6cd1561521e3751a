"""Comparing our node schemas with a reference `/object_info` (ComfyUI's), node by node.

A node diffgraph shares with ComfyUI must publish the same schema, so that workflows, API scripts and the
official frontend see the same widgets: the same input names in the same order, types, defaults, ranges and
choices, the same outputs and category. The reference file is ComfyUI's `/object_info` with descriptive
texts removed and file-listing combos replaced by `["<files>"]` (../shared/reference/).

The two schema dialects ComfyUI publishes are normalised before comparing: a classic combo is
`[[choices...], {options}]`, a node of its newer API publishes `["COMBO", {"options": [...],
"multiselect": false}]`; both become ("COMBO", {"choices": [...]}). Everything else is compared as
published. Torch-free: `diffgraph nodes --missing-vs` uses it without the model stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The widget options compared; tooltips and purely cosmetic flags (display, dynamicPrompts, advanced,
# upload buttons) are not part of a node's contract with a workflow.
COMPARED_OPTIONS = (
    "default",
    "min",
    "max",
    "step",
    "round",
    "multiline",
    "control_after_generate",
    "forceInput",
)

# What the reference writes for a combo whose choices are the files of a folder.
FILE_CHOICES_MARK = "<files>"

# Stands for an option one side does not publish.
ABSENT = "<absent>"


def load_reference(path: str | Path) -> dict[str, dict[str, Any]]:
    """The reference `/object_info` as a dict node type -> schema."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not an /object_info object (a JSON object of node schemas)")
    return data


def normalise_input(spec: list[Any]) -> tuple[str, dict[str, Any]]:
    """One input spec as (type, compared options); combos of both dialects become ("COMBO", choices)."""
    kind, options = spec[0], dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    compared = {key: options[key] for key in COMPARED_OPTIONS if key in options}
    if isinstance(kind, list):
        return "COMBO", {**compared, "choices": list(kind)}
    if kind == "COMBO" and "options" in options:
        return "COMBO", {**compared, "choices": list(options["options"])}
    return str(kind), compared


@dataclass(frozen=True)
class Difference:
    """One way our schema of a node differs: `where` is "required.seed" (an input), "required" (the input
    list of a section) or "node"; `key` what differs there ("type", "default", "order", "category"...)."""

    where: str
    key: str
    ours: Any
    reference: Any

    def __str__(self) -> str:
        return f"{self.where}: {self.key} {self.ours!r}, reference {self.reference!r}"


def _is_file_list(choices: Any) -> bool:
    return isinstance(choices, list) and FILE_CHOICES_MARK in choices


def _input_differences(where: str, ours: list[Any], theirs: list[Any], lists_files: bool) -> list[Difference]:
    our_type, our_opts = normalise_input(ours)
    their_type, their_opts = normalise_input(theirs)
    if our_type != their_type:
        return [Difference(where, "type", our_type, their_type)]
    if lists_files or _is_file_list(their_opts.get("choices")):
        # A folder's listing depends on the machine: only "it is a combo" is comparable.
        our_opts.pop("choices", None)
        their_opts.pop("choices", None)
    problems = []
    for key in sorted(set(our_opts) | set(their_opts)):
        mine, ref = our_opts.get(key, ABSENT), their_opts.get(key, ABSENT)
        if mine != ref or (type(mine) is bool) != (type(ref) is bool):
            problems.append(Difference(where, key, mine, ref))
    return problems


def schema_differences(
    ours: Mapping[str, Any], theirs: Mapping[str, Any], file_inputs: Iterable[str] = ()
) -> list[Difference]:
    """Every difference between our schema of a node and the reference's (empty: the same).

    `file_inputs` names our inputs whose choices are a folder's files: their lists are not compared
    (the reference marks most such lists `<files>`, but a list that held only fixed entries on the
    machine it was taken on, such as VAELoader's `pixel_space`, is not marked)."""
    files = set(file_inputs)
    problems: list[Difference] = []
    for section in ("required", "optional"):
        our_inputs = dict(ours.get("input", {}).get(section, {}))
        their_inputs = dict(theirs.get("input", {}).get(section, {}))
        if list(our_inputs) != list(their_inputs):
            problems.append(Difference(section, "order", list(our_inputs), list(their_inputs)))
        for name in our_inputs.keys() & their_inputs.keys():
            where = f"{section}.{name}"
            problems += _input_differences(where, our_inputs[name], their_inputs[name], name in files)
    for key in ("output", "output_name", "output_is_list", "category", "output_node"):
        if ours.get(key) != theirs.get(key):
            problems.append(Difference("node", key, ours.get(key), theirs.get(key)))
    return sorted(problems, key=lambda d: (d.where, d.key))


def missing_by_category(reference: Mapping[str, Any], ours: Iterable[str]) -> dict[str, list[str]]:
    """The reference node types we do not have, grouped by their reference category (both sorted)."""
    have = set(ours)
    grouped: dict[str, list[str]] = {}
    for name, info in reference.items():
        if name not in have:
            grouped.setdefault(str(info.get("category", "")), []).append(name)
    return {category: sorted(names) for category, names in sorted(grouped.items())}
