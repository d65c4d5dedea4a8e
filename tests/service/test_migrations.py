"""Alembic creates the schema from empty, matches the tables, and downgrades back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from xtaldiff import db

TABLES = {"checkpoints", "checkpoint_blobs", "jobs", "structures", "workers"}


def test_upgrade_from_empty_matches_models_and_downgrades_to_empty(database_url):
    engine = db.get_engine(database_url)
    assert set(inspect(engine).get_table_names()) == set()
    db.upgrade(database_url)
    assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
    # Autogenerate finds nothing to add: the migrations are the models.
    command.check(db.alembic_config(database_url))
    db.downgrade(database_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}


def test_each_revision_upgrades_and_downgrades(database_url):
    engine = db.get_engine(database_url)

    def structure_columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("structures")}

    db.upgrade(database_url, "0001")
    assert "invalid_reason" not in structure_columns()
    db.upgrade(database_url, "0002")
    assert "invalid_reason" in structure_columns()
    db.downgrade(database_url, "0001")
    assert "invalid_reason" not in structure_columns()

    def checkpoint_columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("checkpoints")}

    db.upgrade(database_url, "0003")
    assert {"chosen_by_admin", "validation_sent_at"} <= checkpoint_columns()
    db.downgrade(database_url, "0002")
    assert not {"chosen_by_admin", "validation_sent_at"} & checkpoint_columns()

    db.upgrade(database_url, "0005")
    assert not {"known_as", "novel"} & structure_columns()
    db.upgrade(database_url, "0006")
    assert {"known_as", "novel"} <= structure_columns()
    db.downgrade(database_url, "0005")
    assert not {"known_as", "novel"} & structure_columns()
