"""The command-line machinery shared by ``rcnn`` (:mod:`rcnn.cli`) and ``python -m rcnn.core.resnet``:
library errors as one-line exits, and options whose defaults are read from the library.

Importing it imports click, not torch.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .errors import RcnnError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to Click's exit codes: RcnnError -> 1, ValueError -> 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RcnnError as e:
            raise click.ClickException(one_line(str(e))) from None
        except ValueError as e:
            raise click.UsageError(one_line(str(e))) from None
        except OSError as e:  # permissions, a full disk, a path that is a folder, ...
            where = f"{e.filename}: " if e.filename else ""
            raise click.ClickException(one_line(f"{where}{e.strerror or e}")) from None
        except (KeyboardInterrupt, EOFError):
            click.echo("interrupted; finished outputs are kept and a re-run resumes", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as e:  # a bug, not bad input: still one line, the traceback with RCNN_DEBUG=1
            if os.environ.get("RCNN_DEBUG"):
                raise
            raise click.ClickException(one_line(f"unexpected error ({type(e).__name__}: {e}); "
                                                "re-run with RCNN_DEBUG=1 for the traceback and please report it")) from None

    return wrapper


def one_line(message: str) -> str:
    """The first line of ``message`` (library messages can embed multi-line library text)."""
    lines = [ln for ln in message.strip().splitlines() if ln.strip()]
    return lines[0] if lines else message


def split_csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


# --------------------------------------------------------------------------- options that set library settings


def resolve(ref: str) -> Any:
    """The object ``"module:name"`` of the rcnn package (``"train:TrainConfig"``, or in full
    ``"rcnn.arch.fast.config:FastConfig"``), imported on first use: a command imports only what it
    runs (``rcnn parse`` never imports torch)."""
    module, name = ref.split(":")
    full = module if module == __package__ or module.startswith(f"{__package__}.") else f"{__package__}.{module}"
    return getattr(importlib.import_module(full), name)


def library_default(ref: str, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``ref``, or of parameter ``name`` of the function ``ref``."""
    obj = resolve(ref)
    if dataclasses.is_dataclass(obj):
        f = next(f for f in dataclasses.fields(obj) if f.name == name)
        return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    return inspect.signature(obj).parameters[name].default


class LibraryOption(click.Option):
    """An option that sets one library setting: a dataclass field or a function parameter, named by the option's dest.

    Its value is None unless given, so the library's own default applies, and ``--help`` shows that default:
    it is written once, in the library.
    """

    def __init__(self, *args: Any, source: str, default_text: str | Callable[[], str] | None = None,
                 also: tuple[str, str] | None = None, **kwargs: Any) -> None:
        self.source = source  # "module:DataclassOrFunction"
        # what --help says instead, where the default is not the library's (a function: read from the library when
        # --help is written, as the library's defaults are)
        self.default_text = default_text
        self.also = also  # (when, "module:Dataclass"): a second setting this option sets, e.g. ("--arch fast", FAST)
        super().__init__(*args, default=None, **kwargs)

    @property
    def library_default(self) -> Any:
        return library_default(self.source, self.name or "")

    @property  # Click reads it only to write --help
    def show_default(self) -> str | bool:
        if self.is_flag and not self.secondary_opts:
            return False  # a one-sided flag is off unless given; its help says what giving it does
        if self.default_text:
            return self.default_text() if callable(self.default_text) else self.default_text
        text = self.default_of(self.library_default)
        if self.also:
            other = library_default(self.also[1], self.name or "")
            if other != self.library_default:
                text += f"; {self.also[0]}: {self.default_of(other)}"
        return text

    def default_of(self, value: Any) -> str:
        """How --help writes a default value (for a flag pair: the side that is the default)."""
        if self.is_flag:
            return (self.opts if value else self.secondary_opts)[0].lstrip("-")
        return str(value)

    @show_default.setter
    def show_default(self, value: Any) -> None:
        pass  # Click sets it in __init__; the default comes from the library

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if self.show_default:
            extra["default"] = self.show_default  # as the library writes it (Click would add parentheses)
        return extra


class RegistryChoice(click.Choice):
    """The names of a registry (``"backbones:BACKBONES"``), read when first needed: registering adds a choice."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(resolve(self.ref))

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


class RegistryList(RegistryChoice):
    """A comma-separated list of a registry's names (``rcnn,fast``) -> a list, each name checked as
    :class:`RegistryChoice` checks one (a bad name is a usage error naming it and the choices)."""

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        one = super().get_metavar(param, ctx)
        return f"{one}[,...]" if one else one

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (list, tuple)):
            return list(value)
        names = split_csv(value) or []
        if not names:
            self.fail(f"'{value}' names none of {', '.join(self.choices)}", param, ctx)
        return [super(RegistryList, self).convert(name, param, ctx) for name in names]


def option_for(source: str, name: str, *decls: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``click.option(*decls)`` for the setting ``name`` of ``source`` (``"module:DataclassOrFunction"``).

    Examples: ``option_for("train:TrainConfig", "epochs", "--epochs", type=click.IntRange(1), help=...)``;
    a flag that turns a default True off: ``option_for("detect:DetectConfig", "box_regression",
    "--no-box-regression", is_flag=True, flag_value=False, help=...)``.
    """
    return click.option(*decls, name, cls=LibraryOption, source=source, **kwargs)


def configured(base: Any, options: dict[str, Any]) -> Any:
    """``base`` (a settings dataclass) with each of its fields that ``options`` sets replaced, and validated again."""
    names = {f.name for f in dataclasses.fields(base)}
    return dataclasses.replace(base, **{k: v for k, v in options.items() if k in names and v is not None})


def given(options: dict[str, Any], *names: str) -> dict[str, Any]:
    """The ``options`` the user gave (of ``names``, when named): what to pass on as keyword arguments."""
    return {k: v for k, v in options.items() if v is not None and (not names or k in names)}


def csv_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """Click callback: "cat, dog" -> ["cat", "dog"]."""
    return split_csv(value)


def apply(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator applying ``decorators`` in the order written (as if stacked in that order)."""
    def decorate(fn: Any) -> Any:
        return functools.reduce(lambda f, d: d(f), reversed(decorators), fn)
    return decorate
