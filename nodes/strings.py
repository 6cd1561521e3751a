"""Text nodes (ComfyUI's utils/string family): concatenation, slicing, case, comparisons and regular
expressions on STRING values (regex flags follow Python's `re`, as in ComfyUI), and PreviewAny, which
shows any value as text."""

from __future__ import annotations

import json
import re
from typing import Any

from engine import api

CATEGORY = "utils/string"


def _text(name: str) -> api.Input:
    """A multi-line text widget without a default (ComfyUI declares none; the frontend starts it empty)."""
    return api.String(name, None, multiline=True)


def _plain_int(name: str) -> api.Input:
    """An INT widget with no default, range or step, as ComfyUI's Substring declares its bounds."""
    return api.Int(name, None, min=None, max=None, step=None)  # type: ignore[arg-type]


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    flags = 0
    if case_insensitive:
        flags |= re.IGNORECASE
    if multiline:
        flags |= re.MULTILINE
    if dotall:
        flags |= re.DOTALL
    return flags


def _regex_flag_inputs(optional: bool = False) -> list[api.Input]:
    return [
        api.Boolean("case_insensitive", True, optional=optional),
        api.Boolean("multiline", False, optional=optional),
        api.Boolean("dotall", False, optional=optional),
    ]


@api.node(
    "StringConcatenate",
    category=CATEGORY,
    display_name="Concatenate",
    inputs=[_text("string_a"), _text("string_b"), api.String("delimiter", "", extra={"multiline": False})],
    outputs=[api.STRING],
)
def string_concatenate(string_a: str, string_b: str, delimiter: str):
    """string_a + delimiter + string_b."""
    return (f"{string_a}{delimiter}{string_b}",)


@api.node(
    "StringSubstring",
    category=CATEGORY,
    display_name="Substring",
    inputs=[_text("string"), _plain_int("start"), _plain_int("end")],
    outputs=[api.STRING],
)
def string_substring(string: str, start: int, end: int):
    """The characters from start up to (not including) end; negative positions count from the end."""
    return (string[start:end],)


@api.node(
    "StringLength",
    category=CATEGORY,
    display_name="Length",
    inputs=[_text("string")],
    outputs=[api.Output(api.INT, "length")],
)
def string_length(string: str):
    """The number of characters (code points)."""
    return (len(string),)


CASE_MODES = ["UPPERCASE", "lowercase", "Capitalize", "Title Case"]


@api.node(
    "CaseConverter",
    category=CATEGORY,
    display_name="Case Converter",
    inputs=[_text("string"), api.Combo("mode", CASE_MODES)],
    outputs=[api.STRING],
)
def case_converter(string: str, mode: str):
    convert = {
        "UPPERCASE": str.upper,
        "lowercase": str.lower,
        "Capitalize": str.capitalize,
        "Title Case": str.title,
    }.get(mode)
    return (convert(string) if convert else string,)


TRIM_MODES = ["Both", "Left", "Right"]


@api.node(
    "StringTrim",
    category=CATEGORY,
    display_name="Trim",
    inputs=[_text("string"), api.Combo("mode", TRIM_MODES)],
    outputs=[api.STRING],
)
def string_trim(string: str, mode: str):
    """Strip whitespace from both ends, the left or the right."""
    trim = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}.get(mode)
    return (trim(string) if trim else string,)


@api.node(
    "StringReplace",
    category=CATEGORY,
    display_name="Replace",
    inputs=[_text("string"), _text("find"), _text("replace")],
    outputs=[api.STRING],
)
def string_replace(string: str, find: str, replace: str):
    """Every occurrence of `find` replaced (plain text, not a pattern)."""
    return (string.replace(find, replace),)


@api.node(
    "StringContains",
    category=CATEGORY,
    display_name="Contains",
    inputs=[_text("string"), _text("substring"), api.Boolean("case_sensitive", True)],
    outputs=[api.Output(api.BOOLEAN, "contains")],
)
def string_contains(string: str, substring: str, case_sensitive: bool):
    if not case_sensitive:
        string, substring = string.lower(), substring.lower()
    return (substring in string,)


COMPARE_MODES = ["Starts With", "Ends With", "Equal"]


@api.node(
    "StringCompare",
    category=CATEGORY,
    display_name="Compare",
    inputs=[
        _text("string_a"),
        _text("string_b"),
        api.Combo("mode", COMPARE_MODES),
        api.Boolean("case_sensitive", True),
    ],
    outputs=[api.BOOLEAN],
)
def string_compare(string_a: str, string_b: str, mode: str, case_sensitive: bool):
    """Whether string_a starts with, ends with or equals string_b."""
    a, b = (string_a, string_b) if case_sensitive else (string_a.lower(), string_b.lower())
    if mode == "Starts With":
        return (a.startswith(b),)
    if mode == "Ends With":
        return (a.endswith(b),)
    return (a == b,)


@api.node(
    "RegexMatch",
    category=CATEGORY,
    display_name="Regex Match",
    inputs=[_text("string"), _text("regex_pattern"), *_regex_flag_inputs()],
    outputs=[api.Output(api.BOOLEAN, "matches")],
)
def regex_match(string: str, regex_pattern: str, case_insensitive: bool, multiline: bool, dotall: bool):
    """Whether the pattern matches anywhere in the text; an invalid pattern matches nothing (as ComfyUI)."""
    try:
        found = re.search(regex_pattern, string, _flags(case_insensitive, multiline, dotall))
    except re.error:
        return (False,)
    return (found is not None,)


EXTRACT_MODES = ["First Match", "All Matches", "First Group", "All Groups"]


def _extract(pattern: re.Pattern[str], string: str, mode: str, group_index: int) -> str:
    if mode == "First Match":
        found = pattern.search(string)
        return found.group(0) if found else ""
    if mode == "All Matches":
        # With groups in the pattern ComfyUI joins each match's first group (what findall returns).
        matches = pattern.findall(string)
        return "\n".join(m[0] if isinstance(m, tuple) else m for m in matches)
    if mode == "First Group":
        found = pattern.search(string)
        if found is None or len(found.groups()) < group_index:
            return ""
        return found.group(group_index) or ""
    if mode == "All Groups":
        parts = [
            m.group(group_index) or ""
            for m in pattern.finditer(string)
            if m.groups() and len(m.groups()) >= group_index
        ]
        return "\n".join(parts)
    return ""


@api.node(
    "RegexExtract",
    category=CATEGORY,
    display_name="Regex Extract",
    inputs=[
        _text("string"),
        _text("regex_pattern"),
        api.Combo("mode", EXTRACT_MODES),
        *_regex_flag_inputs(),
        api.Int("group_index", 1, min=0, max=100, step=None),
    ],
    outputs=[api.STRING],
)
def regex_extract(
    string: str,
    regex_pattern: str,
    mode: str,
    case_insensitive: bool,
    multiline: bool,
    dotall: bool,
    group_index: int,
):
    """Matches or groups of the pattern, several joined by newlines; an invalid pattern gives ""."""
    try:
        pattern = re.compile(regex_pattern, _flags(case_insensitive, multiline, dotall))
    except re.error:
        return ("",)
    return (_extract(pattern, string, mode, group_index),)


@api.node(
    "RegexReplace",
    category=CATEGORY,
    display_name="Regex Replace",
    inputs=[
        _text("string"),
        _text("regex_pattern"),
        _text("replace"),
        *_regex_flag_inputs(optional=True),
        api.Int("count", 0, min=0, max=100, step=None, optional=True),
    ],
    outputs=[api.STRING],
)
def regex_replace(
    string: str,
    regex_pattern: str,
    replace: str,
    case_insensitive: bool = True,
    multiline: bool = False,
    dotall: bool = False,
    count: int = 0,
):
    """re.sub: `replace` may refer to groups (\\1, \\g<name>); count 0 replaces every match. An invalid
    pattern is an error, as in ComfyUI (which catches it only in Match and Extract)."""
    flags = _flags(case_insensitive, multiline, dotall)
    return (re.sub(regex_pattern, replace, string, count=count, flags=flags),)


def preview_text(source: Any) -> str:
    """How PreviewAny shows a value: text as is, numbers and booleans with str(), other values as JSON
    if they serialise, else str()."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, int | float | bool):
        return str(source)
    try:
        return json.dumps(source)
    except (TypeError, ValueError):
        try:
            return str(source)
        except Exception:  # a value whose __str__ fails still gets a preview line
            return "source exists, but could not be serialized."


@api.node(
    "PreviewAny",
    category="utils",
    display_name="Preview Any",
    inputs=[api.Input("source", api.ANY)],
    output_node=True,
)
def preview_any(source: Any = None):
    """Show any value as text on the node."""
    return api.NodeOutput(ui={"text": (preview_text(source),)})


NODES = [
    string_concatenate,
    string_substring,
    string_length,
    case_converter,
    string_trim,
    string_replace,
    string_contains,
    string_compare,
    regex_match,
    regex_extract,
    regex_replace,
    preview_any,
]
