import argparse
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from raysight.config import doc
from raysight.flags import add_flags, flag_overrides


@dataclass(frozen=True)
class _Example:
    name: str = field(default="a", metadata=doc("A name."))
    size: tuple[int, int] | None = field(default=None, metadata=doc("Size.", metavar=("H", "W")))
    mode: Literal["x", "y"] = field(default="x", metadata=doc("Mode."))
    fast: bool = field(default=False, metadata=doc("Go fast."))
    extra: dict[str, Any] = field(default_factory=dict, metadata=doc("Extras.", flag="--extra-arg"))
    rate: float | None = field(default=None, metadata=doc("Rate, in 100% units."))


def _parser(cls: type, **kwargs: Any) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_flags(parser, cls, title="example", **kwargs)
    return parser


def test_only_given_flags_are_collected() -> None:
    parser = _parser(_Example)
    assert flag_overrides(parser.parse_args([]), _Example) == {}
    args = parser.parse_args(
        [
            *("--size", "3", "4", "--mode", "y", "--no-fast", "--rate", "0.5"),
            *("--extra-arg", "k=1", "--extra-arg", "j=[1, 2]"),
        ]
    )
    assert flag_overrides(args, _Example) == {
        "size": (3, 4),
        "mode": "y",
        "fast": False,
        "extra": {"k": 1, "j": [1, 2]},
        "rate": 0.5,
    }


def test_help_shows_metavars_and_class_defaults() -> None:
    help_text = _parser(_Example).format_help()
    assert "--size H W" in help_text
    assert "--extra-arg KEY=VALUE" in help_text
    assert "A name. (default: a)" in help_text
    assert "100% units" in help_text  # a literal % survives argparse's formatting


def test_required_fields_must_be_given(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser(_Example, required=("name",))
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "required: --name" in capsys.readouterr().err


def test_a_field_without_help_is_refused() -> None:
    @dataclass
    class Undocumented:
        documented: int = field(default=1, metadata=doc("Fine."))
        bare: int = 2

    with pytest.raises(TypeError, match=r"Undocumented\.bare has no help"):
        _parser(Undocumented)


def test_a_type_without_a_flag_is_refused() -> None:
    @dataclass
    class Mixed:
        value: int | str = field(default=1, metadata=doc("Either."))

    with pytest.raises(TypeError, match=r"Mixed\.value: no flag for type"):
        _parser(Mixed)
