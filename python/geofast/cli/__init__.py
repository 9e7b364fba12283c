"""The ``geofast`` command line: a typer app with one module per command.

Commands are thin: parse options, make one library call, render. Every error reaches
:func:`main`, which prints one line (and a hint) to stderr: ``error: ...`` then ``hint: ...``.
The exit code says whose the problem is: 2 for a usage error (an unknown option, a value of the
wrong type or out of range, a missing argument: the command did not start), 1 for everything
else (a file that cannot be read, an option the method would ignore, a failed image). The
traceback is shown only with ``GEOFAST_DEBUG=1``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import typer

from geofast import _console
from geofast.cli._app import app
from geofast.cli._help import tidy, usage_hint
from geofast.cli._options import RAY_LOCAL
from geofast.errors import GeofastError


def _register_commands() -> None:
    # Each command module adds itself to `app` on import.
    from geofast.cli import (  # noqa: F401
        bench,
        check,
        db,
        eval,
        export,
        locate,
        serve,
        train,
    )


_register_commands()


#: Library parameter names whose flag is not simply ``--`` + the name with hyphens.
FLAG_NAMES = {
    "k": "--swc-k",
    "swc_k": "--swc-k",
    # LLMConfig fields (geofast.llm.LLMConfig) and the --llm-* options that set them
    "base_url": "--llm-base-url",
    "model": "--llm-model",
    "timeout_s": "--llm-timeout",
    "max_retries": "--llm-retries",
    "concurrency": "--llm-concurrency",
    "temperature": "--llm-temperature",
    "samples": "--llm-samples",
    "references": "--llm-references",
    "nearest": "--llm-nearest",
    "farthest": "--llm-farthest",
    "image_max_side": "--llm-image-size",
    "max_tokens": "--llm-max-tokens",
    "cache": "--llm-cache",
    "deadline_s": "--llm-deadline",
}


def as_flags(text: str, params: Sequence[str]) -> str:
    """Library messages name parameters (``eps_km``); the CLI shows its flags (``--eps-km``).
    Text in backticks (a command to run) is kept as written, without the backticks."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        for p in params:
            flag = FLAG_NAMES.get(p, "--" + p.replace("_", "-"))
            parts[i] = re.sub(rf"(?<![\w-]){re.escape(p)}(?![\w-])", flag, parts[i])
    return "".join(parts)


#: Options whose value may be left out (``--ray`` alone: a local cluster), with the value used then.
_OPTIONAL_VALUE = {"--ray": RAY_LOCAL}


def _optional_values(args: list[str]) -> list[str]:
    """Give a bare ``--ray`` (last, or followed by another option) its implicit value."""
    out: list[str] = []
    for i, a in enumerate(args):
        out.append(a)
        if a == "--":
            out.extend(args[i + 1 :])
            break
        if a in _OPTIONAL_VALUE and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(_OPTIONAL_VALUE[a])
    return out


#: Exit code of a usage error (click's): the command line itself is wrong.
USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    Every error ends here as ``error:``/``hint:`` lines on stderr: usage errors exit 2
    (:data:`USAGE_ERROR`), geofast's errors and anything unexpected exit 1.
    """
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    args = _optional_values(list(sys.argv[1:] if argv is None else argv))
    command = tidy(typer.main.get_command(app))
    try:
        rv = command.main(args=args, prog_name="geofast", standalone_mode=False)
        code: int = rv if isinstance(rv, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except NoArgsIsHelpError:  # the help is printed as the error is made
        code = USAGE_ERROR
    except UsageError as e:
        _console.error_line(e.format_message(), usage_hint(e))
        code = USAGE_ERROR
    except ClickException as e:
        _console.error_line(e.format_message())
        code = e.exit_code
    except typer.Abort:
        _console.error_line("aborted")
        code = 1
    except KeyboardInterrupt:
        _console.error_line("interrupted")
        code = 130
    except GeofastError as e:
        if _console.debug_enabled():
            raise
        _console.error_line(as_flags(str(e), e.params), as_flags(e.hint, e.params) if e.hint else None)
        code = 1
    except Exception as e:  # the CLI must never show a raw traceback
        if _console.debug_enabled():
            raise
        _console.error_line(
            f"{type(e).__name__}: {e}",
            f"this looks like a bug in geofast; rerun with {_console.DEBUG_ENV}=1 for the traceback",
        )
        code = 1
    return code


def run() -> None:
    sys.exit(main())


__all__ = ["app", "main", "run"]
