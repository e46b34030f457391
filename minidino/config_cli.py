"""The training config on the command line: one `--field-name VALUE` option per field.

Each option's type comes from its field's type hint, its help from the field's reason (the
`help` in its metadata) and the value the chosen preset gives it; `config_from_args` applies the
options given on top of a preset, and a bad value is refused by a `ConfigError` that names the
option as typed, the field, the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from minidino.config import TrainConfig
from minidino.config_checks import KIND_WORDS, ConfigError, field_types

_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def _parse_value(name: str, kind: type, text: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        if kind is bool:
            return _BOOLS[text.lower()]
        return tuple(float(v) for v in text.split(",")) if kind is tuple else kind(text)
    except (KeyError, ValueError):
        how = " (write low,high)" if kind is tuple else ""
        raise ConfigError(name, text, f"must be {KIND_WORDS[kind]}{how}",
                          context=f"--{name.replace('_', '-')} {text!r}: ") from None


def _as_typed(value: Any) -> str:
    """A config value as it is typed on the command line: none, true, 0.4,1 ..."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_arguments(parser: Any, preset_name: str | None = None,
                         preset: TrainConfig | None = None) -> None:
    """Add one `--field-name` option per TrainConfig field to an argparse parser, in one group,
    with the field's help text. With `preset` each help ends with the value that preset (named
    `preset_name`) gives the field: the parser is built before `--preset` is read, so this is
    the value of the command's default preset."""
    about = None if preset is None else (f"[preset: X] is the value of the {preset_name} preset; "
                                         "--preset (and --fast) change it.")
    group = parser.add_argument_group("config options (any field of TrainConfig)", about)
    for f in fields(TrainConfig):
        kind = field_types(TrainConfig)[f.name][0]
        text = f.metadata["help"]
        if preset is not None:
            text += f" [preset: {_as_typed(getattr(preset, f.name))}]"
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, type=str,
                           metavar=kind.__name__.upper(), help=text.replace("%", "%%"))


def config_from_args(base: TrainConfig, args: Any) -> TrainConfig:
    """Apply the options given on the command line on top of `base`; a ConfigError names the
    option as typed, the field, the value and what is allowed."""
    texts = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    changes = {name: _parse_value(name, field_types(TrainConfig)[name][0], text)
               for name, text in texts.items()}
    try:
        return replace(base, **changes)
    except ConfigError as err:
        option = f"--{err.field.replace('_', '-')}"
        if err.field in texts:
            raise ConfigError(err.field, err.value, err.allowed,
                              context=f"{option} {texts[err.field]!r}: ") from None
        raise ConfigError(err.field, err.value, f"{err.allowed} (the value comes from the "
                          f"preset; set another with {option})") from None
