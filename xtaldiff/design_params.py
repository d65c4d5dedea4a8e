"""A design request as run: parsed and completed once where it enters (POST /design), stored as
the job's JSON, read back by the worker. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xtaldiff.samplers import DEFAULT_SAMPLER


@dataclass(frozen=True)
class DesignParams:
    model: str
    dataset: str
    target: float
    num_samples: int
    num_atoms: int | None  # None: drawn from the training distribution
    elements: tuple[str, ...] | None  # None: the model's whole vocabulary
    guidance: float
    steps: int | None  # None only in jobs stored before steps were filled in: the model's default
    sampler: str
    seed: int
    relax: bool = False

    def as_json(self) -> dict:
        data = asdict(self)
        data["elements"] = None if self.elements is None else list(self.elements)
        return data

    @classmethod
    def from_json(cls, data: dict) -> DesignParams:
        """A stored request; jobs stored before `sampler` and `relax` existed read as their defaults."""
        return cls(
            model=data["model"], dataset=data["dataset"], target=float(data["target"]),
            num_samples=int(data["num_samples"]), num_atoms=data.get("num_atoms"),
            elements=None if data.get("elements") is None else tuple(data["elements"]),
            guidance=float(data["guidance"]), steps=data.get("steps"),
            sampler=data.get("sampler") or DEFAULT_SAMPLER, seed=int(data["seed"]),
            relax=bool(data.get("relax", False)),
        )
