from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.bundle import build_bundle, cif_name
from api.cache import CachedJob
from api.deps import OwnerDep, SessionDep
from api.errors import Conflict, NotFound
from api.schemas import JobOut, Link, Problem, StructureDetail, StructurePage
from api.views import job_out, structure_detail
from xtaldiff import queries
from xtaldiff.states import JobStatus
from xtaldiff.tables import Job

router = APIRouter(prefix="/jobs", tags=["jobs"])
NOT_FOUND = {404: {"model": Problem}}
MAX_PAGE = 500
# Indices beyond a 32-bit integer cannot exist (a job holds at most max_num_samples) and would
# overflow the database's integer columns; smaller ones out of range get a 404 that says which exist.
MAX_INDEX = 2**31 - 1
StructureIndex = Annotated[int, Path(ge=-MAX_INDEX, le=MAX_INDEX, description="Structure index k, 0-based.")]


def _job(session: Session, job_id: str, owner: str | None) -> Job:
    job = queries.get_job(session, job_id=job_id, owner=owner)
    if job is None:
        raise NotFound(f"no job {job_id!r}: check the id returned by POST /design")
    return job


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND, summary="A job")
async def get_job(job_id: str, request: Request, owner: OwnerDep) -> Response:
    """Status, progress, timings, request, model, summary and the structures with links."""
    cache = request.app.state.finished_jobs
    cached = cache.get(job_id)
    if cached is None or (owner is not None and cached.owner != owner):
        cached = await run_in_threadpool(_render_job, request, job_id, owner)
    return Response(cached.body, media_type="application/json")


def _render_job(request: Request, job_id: str, owner: str | None) -> CachedJob:
    with request.app.state.sessions() as session:
        job = _job(session, job_id, owner)
        body = job_out(job, queries.list_structures(session, job_id=job.id)).model_dump_json()
    rendered = CachedJob(job.owner, body.encode())
    if JobStatus(job.status).finished:
        request.app.state.finished_jobs.put(job.id, rendered)
    return rendered


@router.delete(
    "/{job_id}", response_model=JobOut, status_code=status.HTTP_202_ACCEPTED,
    responses={**NOT_FOUND, 409: {"model": Problem}}, summary="Cancel a job",
)
def cancel_job(job_id: str, session: SessionDep, owner: OwnerDep) -> JobOut:
    """Cancel a queued job at once; a running one stops after its current sampling step."""
    job = _job(session, job_id, owner)
    if job.status in (JobStatus.succeeded, JobStatus.failed):
        raise Conflict(f"job {job_id} already {job.status}; there is nothing to cancel")
    queries.request_cancel(session, job=job)
    session.commit()
    return job_out(job, [])


@router.get("/{job_id}/structures", response_model=StructurePage, responses=NOT_FOUND,
            summary="Structures of a job, paginated")
def list_structures(
    job_id: str, session: SessionDep, owner: OwnerDep,
    offset: Annotated[int, Query(ge=0, le=MAX_INDEX, description="Index of the first structure.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
) -> StructurePage:
    job = _job(session, job_id, owner)
    total = queries.count_structures(session, job_id=job.id)
    items = queries.list_structures(session, job_id=job.id, offset=offset, limit=limit)
    base = f"/jobs/{job.id}/structures"
    links = {}
    if offset + limit < total:
        links["next"] = Link(href=f"{base}?offset={offset + limit}&limit={limit}")
    if offset > 0:
        links["prev"] = Link(href=f"{base}?offset={max(offset - limit, 0)}&limit={limit}")
    return StructurePage(items=[structure_detail(s) for s in items], total=total,
                         offset=offset, limit=limit, links=links)


def _structure(session: Session, job: Job, index: int):
    structure = queries.get_structure(session, job_id=job.id, index=index)
    if structure is None:
        total = queries.count_structures(session, job_id=job.id)
        if total == 0:
            raise NotFound(f"job {job.id} has no structures (it is {job.status})")
        raise NotFound(f"structure {index} does not exist: job {job.id} has indices 0 to "
                       f"{total - 1}")
    return structure


@router.get("/{job_id}/structures/{index}.cif", responses=NOT_FOUND,
            response_class=Response, summary="One structure as CIF")
def structure_cif(
    job_id: str, index: StructureIndex, session: SessionDep, owner: OwnerDep,
    cell: Annotated[Literal["symmetrized", "p1", "relaxed"], Query(
        description="symmetrized (space group found at symprec 0.1), p1 (raw cell) or relaxed (the cell "
        "CHGNet relaxed it to, P1; a job with `relax`)")
    ] = "symmetrized",
) -> Response:
    structure = _structure(session, _job(session, job_id, owner), index)
    text = {"symmetrized": structure.cif, "p1": structure.cif_p1, "relaxed": structure.relaxed_cif}[cell]
    if text is None:
        raise NotFound(f"structure {index} of job {job_id} was not relaxed: submit the design with "
                       "\"relax\": true, or relax it yourself (`xtaldiff design --relax`)")
    return Response(
        text, media_type="chemical/x-cif",
        headers={"Content-Disposition": f'attachment; filename="{cif_name(structure, cell=cell)}"'},
    )


@router.get("/{job_id}/structures/{index}", response_model=StructureDetail,
            responses=NOT_FOUND, summary="One structure as JSON")
def structure_json(job_id: str, index: StructureIndex, session: SessionDep,
                   owner: OwnerDep) -> StructureDetail:
    return structure_detail(_structure(session, _job(session, job_id, owner), index))


@router.get("/{job_id}/bundle.zip", response_class=Response,
            responses={**NOT_FOUND, 409: {"model": Problem}}, summary="All CIFs and summaries")
def bundle(job_id: str, session: SessionDep, owner: OwnerDep) -> Response:
    """Every CIF (symmetrised and P1), summary.json and summary.csv."""
    job = _job(session, job_id, owner)
    if job.status != JobStatus.succeeded:
        raise Conflict(f"job {job.id} is {job.status}; the bundle exists once it succeeded")
    data = build_bundle(job, queries.list_structures(session, job_id=job.id))
    return Response(
        data, media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="xtaldiff-{job.id}.zip"'},
    )
