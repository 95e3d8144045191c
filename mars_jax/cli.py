"""What every command line shares: one spelling of flags, one-line errors, usage lines.

- Flags are accepted as `--num-per-prompt` and `--num_per_prompt` alike (`Parser` adds the
  other spelling of every long flag).
- Prompts and images named on the command line are read the same way everywhere.
- A mistake is one line on stderr, `error: ...`, and exit status 2, before any model is
  loaded or any file written (`Parser.error`, `one_line_errors`). `MARS_TRACEBACK=1` shows
  the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

EXIT_USAGE = 2


class UsageError(ValueError):
    """A mistake in the command's flags or inputs (reported in one line)."""


class Parser(argparse.ArgumentParser):
    """`argparse` with both spellings of long flags and one-line errors."""

    def add_argument(self, *names, **kwargs):
        spellings = list(names)
        for name in names:
            if name.startswith("--"):
                for other in (name.replace("_", "-"), name.replace("-", "_")):
                    other = "--" + other[2:]
                    if other not in spellings:
                        spellings.append(other)
        if spellings and spellings[0].startswith("--") and "dest" not in kwargs:
            kwargs["dest"] = spellings[0][2:].replace("-", "_")
        return super().add_argument(*spellings, **kwargs)

    def error(self, message: str):
        fail(f"{message} (python -m {self.prog.split()[-1]} --help)")


def parser(name: str, doc: str | None) -> Parser:
    """The parser of `python -m mars_jax.<name>`; its description is the doc's first line."""
    first = (doc or "").strip().split("\n")[0]
    return Parser(prog=f"python -m mars_jax.{name}", description=first, allow_abbrev=False)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Report bad inputs (missing files, bad values) as one `error:` line, exit status 2.

    Library logs below ERROR (Orbax's notes on every checkpoint it opens) are hidden."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        yield
    except (UsageError, ValueError, OSError) as e:
        if os.environ.get("MARS_TRACEBACK"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(message)


# ---- inputs named on the command line -----------------------------------------------------------


def read_prompts(prompt: list[str] | None, prompt_file: str | None) -> list[str]:
    prompts = list(prompt or [])
    if prompt_file:
        if not os.path.isfile(prompt_file):
            raise UsageError(f"--prompt-file={prompt_file}: no such file")
        with open(prompt_file, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        raise UsageError("no prompt: pass --prompt=... or --prompt-file=...")
    return prompts


def image_files(paths: list[str], flag: str) -> list[str]:
    """Image files named by `flag` (files, or folders of .png/.jpg/.webp, sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, f)
                for f in os.listdir(path)
                if f.lower().endswith(IMAGE_SUFFIXES)
            )
            if not found:
                raise UsageError(f"{flag}={path}: no .png/.jpg/.webp images in the folder")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise UsageError(f"{flag}={path}: no such file or folder")
    return files


def read_images(files: list[str], flag: str) -> list[np.ndarray]:
    """uint8 RGB arrays of the files (any size); an unreadable file is a one-line error."""
    out = []
    for path in files:
        try:
            with Image.open(path) as img:
                out.append(np.asarray(img.convert("RGB")))
        except (OSError, UnidentifiedImageError) as e:
            raise UsageError(f"{flag}={path}: not a readable image ({e})") from e
    return out
