"""A config as commented YAML (``clv init``): every key with its value, each commented with the
setting's own description, so the file explains itself and reads back as the same config."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from pipeline.config import Config


def _scalar(value: Any) -> str:
    # Flow style keeps lists and small mappings on the key's line; safe_dump quotes what YAML
    # would otherwise read as another type ("%Y%m%d", "null", dates as text).
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _summary_comment(doc: str | None) -> str:
    """A section's comment: the first sentence of its docstring."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    return f"  # {sentence}." if sentence else ""


def _lines(model: BaseModel, plain: dict[str, Any], indent: int) -> list[str]:
    # ``plain``: the model's JSON-mode dump (paths, dates and tuples as YAML can hold them).
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        comment = f"  # {field.description}" if field.description else ""
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:" + _summary_comment(type(value).__doc__))
            lines += _lines(value, plain[name], indent + 1)
        else:
            lines.append(f"{pad}{name}: {_scalar(plain[name])}{comment}")
    return lines


def commented_config(config: Config, header: list[str]) -> str:
    """``config`` as YAML with a comment per setting, under ``header`` (comment lines)."""
    lines = [f"# {line}" for line in header] + [""] + _lines(config, config.model_dump(mode="json"), 0)
    return "\n".join(lines) + "\n"
