"""The ``${...}`` expression language of workflow files.

A workflow value (any JSON) may hold templates in its strings::

    "${ctx.request.id}"                      the value itself (any JSON type)
    "report-${ctx.date}.csv"                 text around or several ${}: interpolated text
    "${ctx.vars['load-data'].rows[0]}"       member, string key and index lookups
    "${ctx.vars.limit ?? 10}"                the right side when the left is missing or null
    "${ctx.datasource('cache', 'key-${ctx.request.id}')}"   a datasource read (nesting allowed)
    "$${not an expression}"                  '$${' is a literal '${'

Compile once at load time (:func:`compile_value`, :func:`compile_template`: every syntax
and static error is an :class:`~blokrun.errors.ExpressionError` with the column and the
JSON path), then evaluate per step against a :class:`Scope` (:meth:`Compiled.evaluate`,
:meth:`Compiled.evaluate_static`, :func:`render_key`).
"""

from __future__ import annotations

from blokrun.expressions.evaluator import (
    Compiled,
    Scope,
    compile_template,
    compile_value,
    render_key,
)

__all__ = ["Compiled", "Scope", "compile_template", "compile_value", "render_key"]
