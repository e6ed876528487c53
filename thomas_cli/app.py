"""The Typer app and what every command shares: the consoles (`out` = stdout, `err` = stderr), one-line
errors (`guarded`), notes and progress bars on stderr, JSON output. Imported by every layer of the
CLI; imports none of it (the commands register themselves from thomas_cli/commands/).

Global options (-s/--serial, --device, --device-root, --python, --su, --mode) may come before or after the
command: `thomas doctor --device local` is `thomas --device local doctor` (ThomasGroup moves them to the
front unless the command has an option of that name; nothing after `--` moves). Errors are one line on
stderr: `error: ...` (exit 1, 3 for a protocol mismatch); usage errors add `hint: thomas CMD --help`
(exit 2).
"""
from __future__ import annotations

import functools
import importlib
import json
import sys

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from device_agent.errors import ThomasError

# NOTE: the Click that typer itself uses (vendored as typer._click since typer 0.2x), so its exceptions match
click = getattr(typer.core, "_click", None) or typer.core.click

out = Console()
err = Console(stderr=True)


# ============================================================================ the root group
def _is_group(cmd) -> bool:
    return callable(getattr(cmd, "get_command", None))


def _options(cmd, ctx, skip_help: bool = False) -> dict:
    """{option name: Option} of a command, help included unless `skip_help`."""
    helps = set(ctx.help_option_names) if skip_help else set()
    return {n: p for p in cmd.get_params(ctx) if p.param_type_name == "option"
            for n in (*p.opts, *p.secondary_opts) if n not in helps}


def _match(token: str, opts: dict) -> tuple[str | None, int]:
    """(the option `token` names, how many tokens it spans) against `opts`; (None, 1) when none.
    --name=value and -xVALUE carry their value; a flag spans one token."""
    if token in opts:
        p = opts[token]
        return token, 1 if (p.is_flag or p.count) else 1 + max(1, p.nargs)
    if token.startswith("--") and "=" in token and token.split("=", 1)[0] in opts:
        return token.split("=", 1)[0], 1
    if not token.startswith("--") and len(token) > 2 and token[:2] in opts and not opts[token[:2]].is_flag:
        return token[:2], 1
    return None, 1


def hoist_globals(group, ctx, args: list[str]) -> list[str]:
    """argv with the group's own options that follow the command moved (with their values) before it.
    An option the command itself defines stays where it is; nothing after `--` moves; an unknown command
    leaves argv alone (Click reports it)."""
    globals_ = _options(group, ctx, skip_help=True)
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        i += _match(args[i], globals_)[1]
    cmd, j = group, i
    while j < len(args) and _is_group(cmd) and not args[j].startswith("-"):
        cmd = cmd.get_command(ctx, args[j])
        if cmd is None:
            return args
        j += 1
    if cmd is group:
        return args
    own, moved, kept, k = _options(cmd, ctx), [], [], j
    while k < len(args):
        if args[k] == "--":
            kept += args[k:]
            break
        name, width = _match(args[k], own)
        if name is None:
            name, width = _match(args[k], globals_)
            if name is not None:
                if k + width > len(args):
                    raise click.exceptions.UsageError(f"Option '{name}' requires an argument.", ctx=ctx)
                moved += args[k:k + width]
                k += width
                continue
        kept += args[k:k + width]
        k += width
    return args[:i] + moved + args[i:j] + kept


def _given(e) -> str:
    """" (got '0')" when a value check's message does not quote the value it refused (typer's pydantic
    checks say only "Input should be greater than or equal to 1")."""
    errors = getattr(e.__cause__, "errors", None)
    try:
        value = errors()[0]["input"] if callable(errors) else None
    except (IndexError, KeyError, TypeError):
        return ""
    if value is None or str(value) in e.format_message():
        return ""
    return f" (got {str(value)!r})"


def usage_error(e) -> typer.Exit:
    """A Click error as one line (`error: ...`), plus `hint: thomas CMD --help` for a usage error."""
    err.print(f"[bold red]error:[/] {escape(e.format_message() + _given(e))}", highlight=False, soft_wrap=True)
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click.exceptions.UsageError) and ctx is not None:
        names = []
        while ctx is not None and ctx.parent is not None:
            names.insert(0, ctx.info_name)
            ctx = ctx.parent
        err.print(f"[dim]hint: {' '.join(['thomas', *names, '--help'])}[/]", highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


class ThomasGroup(typer.core.TyperGroup):
    """The root command: global options anywhere (hoist_globals), Click's errors as one line + hint."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_globals(self, ctx, list(args)))

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":     # the help was shown: Click's own exit
                raise
            raise usage_error(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":
                raise
            raise usage_error(e) from None


app = typer.Typer(cls=ThomasGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained CNNs on an Android phone's GPU, driven from this laptop.")


def guarded(fn):
    """Turn a ThomasError into a one-line message and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except ThomasError as e:
            _NOTES.clear()           # a failed command's stderr is its error line alone
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except BaseException:
            flush_notes()
            raise
        flush_notes()
        return result

    return wrapper


# NOTE: progress notes ("pushing the agent ...") go to a terminal at once; when stderr is a pipe or a
# file they are held until the command ends and shown only if it succeeded, so a script reading stderr
# of a failed command gets exactly one line.
_NOTES: list[str] = []


def note(msg: str) -> None:
    """A dim progress note on stderr (see _NOTES)."""
    if err.is_terminal:
        err.print(f"[dim]{msg}[/]", highlight=False, soft_wrap=True)
    else:
        _NOTES.append(msg)


def flush_notes() -> None:
    while _NOTES:
        err.print(f"[dim]{_NOTES.pop(0)}[/]", highlight=False, soft_wrap=True)


def current_context():
    """The Click context of the command being run, None outside one (Click's get_current_context, from
    the Click typer uses)."""
    return importlib.import_module(f"{click.__name__}.globals").get_current_context(silent=True)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=1) + "\n")


def progress(what: str) -> Progress:
    """A transient progress bar on stderr, shown only on a terminal (add_task, advance as usual)."""
    return Progress(TextColumn(f"[bold]{what}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not err.is_terminal)
