"""The preprocessing flags a user gives (--mean, --std, --resize, --crop, --interpolation...),
parsed and checked before any data is read, and how they refine or replace a contract (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from qexport.core.errors import QExportError
from qexport.core.preprocessing import Preprocessing


@dataclass(frozen=True)
class PreprocessingFlags:
    """What the command line gave (every field None: nothing)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    resize_mode: str = "shorter"
    crop: int | None = None
    interpolation: str | None = None
    weights_transforms: str | None = None
    stats_from_data: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        """What the flags get wrong by themselves (a crop larger than the resize, a std of 0, two
        mean values) is one sentence before any data is read; the rest once they meet a source."""
        Preprocessing(mean=list(self.mean or (0.0, 0.0, 0.0)), std=list(self.std or (1.0, 1.0, 1.0)),
                      resize=self.resize if self.resize is not None else self.crop,
                      resize_mode=self.resize_mode if self.resize is not None else "exact",
                      crop=self.crop if self.crop is not None else self.resize,
                      interpolation=self.interpolation or "bilinear")  # checks itself

    @property
    def given(self) -> bool:
        """Whether any flag names part of the contract (--weights-transforms and --stats-from-data aside)."""
        return any(v is not None for v in (self.mean, self.std, self.resize, self.crop, self.interpolation))

    def names(self) -> str:
        """The flags given, as the user typed them."""
        shown = []
        for name, value in (("mean", self.mean), ("std", self.std), ("resize", self.resize), ("crop", self.crop),
                            ("interpolation", self.interpolation)):
            if value is not None:
                shown.append(f"--{name} " + (",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)))
        return " ".join(shown)

    def over(self, base: Preprocessing, source: str) -> Preprocessing:
        """``base`` with every given flag replacing its part (``source`` says where it came from)."""
        changes: dict[str, Any] = {"source": source}
        for name in ("mean", "std", "crop", "interpolation"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = list(value) if isinstance(value, tuple) else value
        if self.resize is not None:
            changes.update(resize=self.resize, resize_mode=self.resize_mode)
        return replace(base, **changes)

    def alone(self, size: int | None) -> Preprocessing:
        """The contract the flags describe by themselves; mean and std are required."""
        if self.mean is None or self.std is None:
            raise QExportError(f"{self.names() or 'The flags'} leave the contract incomplete: give both --mean and "
                               "--std (the statistics the model was trained with), e.g. --mean 0.485,0.456,0.406 "
                               "--std 0.229,0.224,0.225.")
        base = Preprocessing(mean=list(self.mean), std=list(self.std), source="")
        if self.crop is None and self.resize is None and size is not None:
            base = replace(base, resize=size, resize_mode="exact")
        return self.over(base, "command-line flags " + self.names())


def parse_resize(text: str | None) -> tuple[int | None, str]:
    """``--resize 256`` (shorter side, aspect kept) or ``--resize 224x224`` (exact, square)."""
    if text is None:
        return None, "shorter"
    parts = text.lower().replace("×", "x").split("x")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise QExportError(f"--resize takes a number of pixels (256: the shorter side) or a square size "
                           f"(224x224), not {text!r}.") from None
    if len(numbers) == 1:
        return numbers[0], "shorter"
    if len(numbers) == 2 and numbers[0] == numbers[1]:
        return numbers[0], "exact"
    raise QExportError(f"--resize {text} is not square; qexport prepares square inputs: pass one side "
                       "(--resize 256, the shorter side) or a square (--resize 224x224).")


def parse_channels(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``--mean 0.485,0.456,0.406``: three numbers, one per RGB channel."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise QExportError(f"{flag} takes three comma-separated numbers (R,G,B in [0, 1] units), not {text!r}.") from None
    if len(values) != 3:
        raise QExportError(f"{flag} needs one value per RGB channel (3), got {len(values)} in {text!r}.")
    return values
