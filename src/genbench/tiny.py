"""Network sizes for smoke runs: a few-millisecond CPU step per family, for the test suite and the
GPU check's CPU mode (``scripts/gpu_check.py --tiny``). Hydra overrides on top of ``model=<family>``,
declared by each family (``FamilySpec.tiny_overrides``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from genbench.registry import families


class _TinyOverrides(Mapping[str, list[str]]):
    """family -> its tiny overrides, read from the registry when asked (so plug-ins count)."""

    def __getitem__(self, family: str) -> list[str]:
        return list(families()[family].tiny_overrides)

    def __iter__(self) -> Iterator[str]:
        return iter(families())

    def __len__(self) -> int:
        return len(families())


TINY_OVERRIDES: Mapping[str, list[str]] = _TinyOverrides()
