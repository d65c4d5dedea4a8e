"""A design request as run: parsed and completed once where it enters (POST /design), stored as
the job's JSON, read back by the worker. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xtaldiff.samplers import DEFAULT_SAMPLER

# Where a structure's atom count comes from when the request names none.
ATOM_COUNTS = {
    "near_target": "the atom counts of the training structures whose property is near the target "
    "(its bin of 5% of the split)",
    "training": "the whole training split's atom counts (the paper's protocol)",
}
ATOM_COUNTS_CHOICES = " or ".join(ATOM_COUNTS)


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
    atom_counts: str = "training"
    charge_balance: bool = False

    def as_json(self) -> dict:
        data = asdict(self)
        data["elements"] = None if self.elements is None else list(self.elements)
        return data

    @classmethod
    def from_json(cls, data: dict) -> DesignParams:
        """A stored request; jobs stored before `sampler`, `relax`, `atom_counts` and `charge_balance`
        existed read as what they ran."""
        return cls(
            model=data["model"], dataset=data["dataset"], target=float(data["target"]),
            num_samples=int(data["num_samples"]), num_atoms=data.get("num_atoms"),
            elements=None if data.get("elements") is None else tuple(data["elements"]),
            guidance=float(data["guidance"]), steps=data.get("steps"),
            sampler=data.get("sampler") or DEFAULT_SAMPLER, seed=int(data["seed"]),
            relax=bool(data.get("relax", False)), atom_counts=data.get("atom_counts") or "training",
            charge_balance=bool(data.get("charge_balance", False)),
        )
