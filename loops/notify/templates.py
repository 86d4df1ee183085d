"""Jinja2 templates for notification bodies and the digest, compiled once at startup.

Every ``*.j2`` file is compiled when the loop is built, so a syntax error fails ``leasectl
run`` at start instead of dead-lettering every notification at 3 a.m. ``StrictUndefined``
turns a misspelt variable into a render error (a permanent delivery failure with the message
in ``last_error``) instead of an empty string in an alert. Names containing ``.html`` are
autoescaped: certificate CNs and owner names come from users.

Templates run in jinja2's ``SandboxedEnvironment``: an operator-supplied template directory
is configuration, not code, and must not reach Python internals through the objects it is
given (``{{ ''.__class__.__mro__ }}`` and friends raise ``SecurityError``). Any failure while
rendering, the sandbox's refusal included, is a :class:`TemplateRenderError` for that one
notification (permanent: the row goes to ``dead`` with the message), never a crashed tick.
The message names the template and the error class, not the values it was rendering.

Notification bodies: ``notify_<snake_case_type>.txt.j2`` when it exists (e.g.
``notify_expiration_warning.txt.j2``), else ``notify_generic.txt.j2``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from leasectl.certs.notify.errors import DeliveryError
from leasectl.errors import ConfigError

REQUIRED = ("notify_generic.txt.j2", "notify_subject.txt.j2", "digest.html.j2")


class TemplateRenderError(DeliveryError):
    """A template failed to render (undefined name, sandbox refusal, runtime error).

    Permanent: the same template and row fail the same way on every retry.
    """

    def __init__(self, name: str, exc: Exception) -> None:
        self.template = name
        if isinstance(exc, jinja2.exceptions.SecurityError):
            what = f"refused by the template sandbox: {exc}"
        elif isinstance(exc, jinja2.TemplateError):
            what = f"{type(exc).__name__}: {exc}"
        else:
            # A runtime error inside the template (1/0, a bad filter argument): its message
            # can embed rendered values, so only the class is shown.
            what = f"{type(exc).__name__} while rendering"
        super().__init__(f"template {name} failed: {what}", permanent=True)


def _autoescape(name: str | None) -> bool:
    return name is not None and ".html" in name


def snake(name: str) -> str:
    """``ExpirationWarning`` -> ``expiration_warning``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Templates:
    """The compiled templates of one directory (the packaged ``loops/templates`` by default)."""

    def __init__(self, directory: str = "") -> None:
        loader: jinja2.BaseLoader
        if directory:
            if not Path(directory).is_dir():
                raise ConfigError(f"notification templates directory {directory!r} does not exist")
            loader = jinja2.FileSystemLoader(directory)
        else:
            loader = jinja2.PackageLoader("leasectl.certs", "templates")
        self.env = jinja2.sandbox.SandboxedEnvironment(
            loader=loader,
            autoescape=_autoescape,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.compiled: dict[str, jinja2.Template] = {}
        problems: list[str] = []
        for name in self.env.list_templates(extensions=["j2"]):
            try:
                self.compiled[name] = self.env.get_template(name)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(f"template {name}, line {exc.lineno}: {exc.message}")
            except jinja2.TemplateError as exc:
                problems.append(f"template {name}: {exc}")
        problems += [
            f"template {name} is missing" for name in REQUIRED if name not in self.compiled
        ]
        if problems:
            raise ConfigError(problems, source=directory or "loops/templates")

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """Render a compiled template.

        :raises TemplateRenderError: any failure, sandbox refusals and undefined names included.
        """
        try:
            return self.compiled[name].render(context)
        except Exception as exc:  # noqa: BLE001 - a template's failure is the template's error
            raise TemplateRenderError(name, exc) from exc

    def notification(self, context: Mapping[str, Any]) -> tuple[str, str]:
        """``(subject, text)`` of a notification; ``context["n"]`` is the row."""
        n = context["n"]
        body_name = f"notify_{snake(str(n['type']))}.txt.j2"
        if body_name not in self.compiled:
            body_name = "notify_generic.txt.j2"
        subject = n.get("subject") or self.render("notify_subject.txt.j2", context)
        # strip() only trims the template's trailing newline: a CR/LF *inside* the subject
        # (from a CN, say) stays and is refused by the channel's header check.
        return str(subject).strip(), self.render(body_name, context)
