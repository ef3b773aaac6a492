"""Rendering `doc_to_text` / `doc_to_target` / `doc_to_choice` the way lm-evaluation-harness does.

lm-eval's rules (api/task.py, ConfigurableTask.doc_to_*), reproduced because prompts must match it
character for character: a template that is exactly a field name returns that field's value unrendered;
otherwise it is rendered with Jinja (undefined fields are errors, trailing newlines kept); a rendered text
or target that is all digits becomes an int when the task has choices (an index); a rendered target that
looks like a list is parsed as a Python literal; a rendered choice list is always parsed as a literal.
A function (a task YAML's `!function`) is called on the document and its result used as is.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable
from typing import Any

import jinja2

from gptjax.errors import GptjaxError


class TemplateError(GptjaxError, ValueError):
    """A template failed on a document; the message names the template and the cause."""


def _regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, string, count=count)


_ENV = jinja2.Environment(loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters["regex_replace"] = _regex_replace  # the one custom filter lm-eval registers


@functools.lru_cache(maxsize=256)
def _compile(template: str) -> jinja2.Template:
    return _ENV.from_string(template)


def render(template: str, doc: dict[str, Any]) -> str:
    try:
        return _compile(template).render(**doc)
    except Exception as err:  # Jinja's own errors and those of expressions inside it, e.g. list.index
        raise TemplateError(f"template {template!r}: {type(err).__name__}: {err}") from None


def _literal(text: str, template: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        raise TemplateError(f"template {template!r} rendered {text[:200]!r}, which is not a Python literal") from None


def doc_to_text(template: str | int | Callable, doc: dict[str, Any], has_choices: bool) -> str | int:
    if callable(template):
        return template(doc)
    if isinstance(template, int):
        return template
    if template in doc:
        return doc[template]
    text = render(template, doc)
    return ast.literal_eval(text) if text.isdigit() and has_choices else text


def doc_to_target(template: str | int | list | Callable, doc: dict[str, Any], has_choices: bool) -> int | str | list:
    if callable(template):
        return template(doc)
    if isinstance(template, (int, list)):
        return template
    if template in doc:
        return doc[template]
    text = render(template, doc)
    if text.isdigit() and has_choices:
        return ast.literal_eval(text)
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        try:
            return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return text
    return text


def doc_to_choice(template: str | list | dict | Callable, doc: dict[str, Any]) -> list[str]:
    if callable(template):
        return list(template(doc))
    if isinstance(template, list):
        return template
    if isinstance(template, dict):
        return list(template.values())
    if template in doc:
        return doc[template]
    choices = _literal(render(template, doc), template)
    if not isinstance(choices, list):
        raise TemplateError(f"doc_to_choice {template!r} gave {type(choices).__name__}, expected a list")
    return choices
