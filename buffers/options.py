"""`opt(default, "help")`: a dataclass config field that carries its --help text.

It lives in the bottom layer (imports nothing of ours) so that every package can declare its
config where it is used; `hilrl.deploy.configtools` turns such dataclasses into YAML and
command-line options and re-exports `opt`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" reads best at call sites
    """A dataclass field with its --help text (extra keywords such as ``group=`` go to its metadata)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})
