"""Turning rows into response bodies (links, derived fields)."""

from __future__ import annotations

from collections.abc import Sequence

from api.schemas import (
    CheckpointOut,
    JobOut,
    Link,
    ModelOut,
    ModelRef,
    Progress,
    PropertyInfo,
    StructureBrief,
    StructureDetail,
    Timings,
)
from xtaldiff.states import JobStatus
from xtaldiff.tables import Checkpoint, Job, StructureRow


def job_links(job_id: str) -> dict[str, Link]:
    base = f"/jobs/{job_id}"
    return {
        "self": Link(href=base),
        "structures": Link(href=f"{base}/structures"),
        "bundle": Link(href=f"{base}/bundle.zip"),
        "cancel": Link(href=base),
    }


def structure_links(structure: StructureRow) -> dict[str, Link]:
    base = f"/jobs/{structure.job_id}/structures/{structure.index}"
    links = {
        "self": Link(href=base),
        "cif": Link(href=f"{base}.cif"),
        "cif_p1": Link(href=f"{base}.cif?cell=p1"),
    }
    if structure.relaxed_cif is not None:
        links["cif_relaxed"] = Link(href=f"{base}.cif?cell=relaxed")
    return links


def structure_brief(structure: StructureRow) -> StructureBrief:
    return StructureBrief(
        index=structure.index, formula=structure.reduced_formula,
        num_atoms=structure.num_atoms, space_group=structure.space_group_symbol,
        predicted_property=structure.predicted_property, valid=structure.valid,
        novel=structure.novel, known_as=structure.known_as,
        predicted_e_above_hull=structure.predicted_e_above_hull, links=structure_links(structure),
    )


def structure_detail(structure: StructureRow) -> StructureDetail:
    return StructureDetail(
        **structure_brief(structure).model_dump(exclude={"links"}),
        links=structure_links(structure),
        full_formula=structure.formula,
        lattice={k: getattr(structure, k) for k in ("a", "b", "c", "alpha", "beta", "gamma",
                                                    "volume")},
        space_group_number=structure.space_group_number,
        valid_structure=structure.valid_structure,
        valid_composition=structure.valid_composition,
        invalid_reason=structure.invalid_reason,
        prediction_note=structure.prediction_note,
        cif=structure.cif, cif_p1=structure.cif_p1,
        relaxed_cif=structure.relaxed_cif, relaxation=structure.relaxation,
    )


def job_out(job: Job, structures: Sequence[StructureRow]) -> JobOut:
    done, total = job.progress_done, job.progress_total
    fraction = 1.0 if job.status == JobStatus.succeeded else (done / total if total else 0.0)
    end = job.finished_at
    return JobOut(
        id=job.id, status=job.status,
        progress=Progress(phase=job.phase, done=done, total=total, fraction=round(fraction, 4)),
        timings=Timings(
            created_at=job.created_at, started_at=job.started_at, finished_at=end,
            queued_s=_seconds(job.created_at, job.started_at),
            wall_s=_seconds(job.created_at, end), worker=job.timings or {},
        ),
        request=job.request,
        model=ModelRef(name=job.model_name, sha256=job.checkpoint_sha256, dataset=job.dataset,
                       property=job.property_name, unit=job.property_unit),
        warnings=job.warnings or [], error=job.error, summary=job.summary,
        structures=[structure_brief(s) for s in structures],
        links=job_links(job.id),
    )


def _seconds(start, end) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


def model_out(checkpoint: Checkpoint) -> ModelOut:
    return ModelOut(**_model_fields(checkpoint))


def checkpoint_out(checkpoint: Checkpoint) -> CheckpointOut:
    return CheckpointOut(
        **_model_fields(checkpoint), status=checkpoint.status,
        rejection_reason=checkpoint.rejection_reason, size_bytes=checkpoint.size_bytes,
        uploaded_at=checkpoint.uploaded_at, validated_at=checkpoint.validated_at,
    )


def _model_fields(checkpoint: Checkpoint) -> dict:
    meta = checkpoint.meta
    prop = meta.property
    return dict(
        name=checkpoint.name, sha256=checkpoint.sha256, dataset=checkpoint.dataset,
        conditioning=checkpoint.conditioning, active=checkpoint.active,
        property=PropertyInfo(name=prop.name, unit=prop.unit, min=prop.min, max=prop.max,
                              percentiles=dict(prop.percentiles)),
        elements=list(meta.elements),
        max_num_atoms=meta.max_num_atoms,
        default_guidance=meta.default_guidance,
        atom_counts_near_target=meta.num_atoms_by_property is not None,
        timesteps=meta.timesteps,
        default_sampler=meta.default_sampler,
        default_steps=meta.default_steps,
        default_charge_balance=meta.default_charge_balance,
        metrics=dict(meta.metrics),
    )
