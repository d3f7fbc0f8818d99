"""`databases:` (many database files, one config): what the config accepts and refuses, and
which files of the folder are its databases (database_files.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdc_daemon.config import Config, DatabasesConfig, parse_config
from cdc_daemon.database_files import choose, database_files, matches
from cdc_daemon.errors import ConfigError

TYPESENSE = {"nodes": ["http://127.0.0.1:8108"], "api_key": "secret"}


def config(tmp_path: Path, **keys: Any) -> Config:
    raw: dict[str, Any] = {"typesense": TYPESENSE, "tables": [{"table": "books"}], **keys}
    return parse_config(raw, tmp_path)


def error_of(tmp_path: Path, **keys: Any) -> str:
    with pytest.raises(ConfigError) as excinfo:
        config(tmp_path, **keys)
    assert excinfo.value.exit_code == 2
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_both_database_and_databases_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, database="app.db", databases={"glob": "*.db"})
    assert "database" in message and "both" in message


def test_neither_database_nor_databases_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path)
    assert message.startswith("config: database: give either `database:`"), message
    assert "`databases:`" in message and "both" not in message


@pytest.mark.parametrize("glob", ["tenants*/*.db", "t?/*.db", "[ab]/*.db", "/srv/*/x.db"])
def test_wildcards_in_the_folder_refused(tmp_path: Path, glob: str) -> None:
    message = error_of(tmp_path, databases={"glob": glob})
    assert message.startswith("config: databases.glob:"), message
    assert "wildcards only in the file name" in message


def test_a_glob_without_a_file_name_refused(tmp_path: Path) -> None:
    assert "file name pattern" in error_of(tmp_path, databases={"glob": "tenants/"})


def test_unknown_placeholder_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, databases={"glob": "*.db", "collection": "{stem}_{tenant}"})
    assert message.startswith("config: databases.collection:"), message
    assert "unknown placeholder {tenant}" in message


def test_a_broken_template_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, databases={"glob": "*.db", "collection": "{stem}_{"})
    assert message.startswith("config: databases.collection:"), message


def test_a_template_without_stem_refused_without_a_manager(tmp_path: Path) -> None:
    message = error_of(tmp_path, databases={"glob": "*.db", "collection": "all_{collection}"})
    assert "has no {stem}" in message and "databases.manager" in message


def test_several_tables_need_collection_in_the_template(tmp_path: Path) -> None:
    two = [{"table": "books"}, {"table": "authors"}]
    message = error_of(tmp_path, databases={"glob": "*.db", "collection": "{stem}"}, tables=two)
    assert "databases.collection" in message and "{collection}" in message
    # one table: {stem} alone names its collection
    assert config(tmp_path, databases={"glob": "*.db", "collection": "{stem}"}).databases


def test_relative_glob_resolved_against_the_config_folder(tmp_path: Path) -> None:
    databases = config(tmp_path, databases={"glob": "tenants/*.db"}).databases
    assert databases is not None
    assert databases.glob == str(tmp_path / "tenants" / "*.db")
    absolute = config(tmp_path, databases={"glob": "/srv/app/*.sqlite"}).databases
    assert absolute is not None and absolute.glob == "/srv/app/*.sqlite"


def test_path_and_for_database(tmp_path: Path) -> None:
    many = config(tmp_path, databases={"glob": "*.db"},
                  tables=[{"table": "books"}, {"table": "authors", "collection": "people"}])
    with pytest.raises(ConfigError, match="--database NAME"):
        _ = many.path
    one = many.for_database(tmp_path / "acme.db")
    assert one.databases is None and one.path == tmp_path / "acme.db"
    assert [t.collection_name for t in one.tables] == ["acme_books", "acme_people"]


def make_db(path: Path) -> Path:
    path.touch()  # an empty file is enough: database_files() lists names
    return path


def databases_in(folder: Path, pattern: str = "*.db") -> DatabasesConfig:
    return DatabasesConfig(glob=str(folder / pattern))


def test_database_files_skips_sqlite_side_files_and_lock_files(tmp_path: Path) -> None:
    for name in ("b.db", "a.db", "a.db-wal", "a.db-shm", "a.db-journal", "a.db.cdc-lock",
                 "notes.txt"):
        make_db(tmp_path / name)
    (tmp_path / "dir.db").mkdir()  # a folder is not a database
    found, left_out = database_files(databases_in(tmp_path, "*"))
    assert found == {"a": tmp_path / "a.db", "b": tmp_path / "b.db",
                     "notes": tmp_path / "notes.txt"}
    assert list(found) == ["a", "b", "notes"]  # sorted
    assert left_out == []
    found, _ = database_files(databases_in(tmp_path, "*.db*"))
    assert list(found) == ["a", "b"]
    assert not matches(databases_in(tmp_path, "*"), "a.db-wal")
    assert matches(databases_in(tmp_path, "*.db"), "a.db")


def test_same_stem_collision_leaves_the_second_out(tmp_path: Path) -> None:
    make_db(tmp_path / "acme.db")
    make_db(tmp_path / "acme.sqlite")
    make_db(tmp_path / "zed.sqlite")
    found, left_out = database_files(databases_in(tmp_path, "*"))
    assert found == {"acme": tmp_path / "acme.db", "zed": tmp_path / "zed.sqlite"}
    assert len(left_out) == 1
    assert str(tmp_path / "acme.sqlite") in left_out[0] and "'acme'" in left_out[0]


def test_a_folder_that_cannot_be_listed_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"databases\.glob"):
        database_files(databases_in(tmp_path / "missing"))


def test_choose(tmp_path: Path) -> None:
    found = {"a": tmp_path / "a.db", "b": tmp_path / "b.db"}
    assert choose(found, None) == found
    assert choose(found, "b") == {"b": tmp_path / "b.db"}
    with pytest.raises(ConfigError) as excinfo:
        choose(found, "c")
    assert "--database 'c'" in str(excinfo.value) and "a, b" in str(excinfo.value)
    with pytest.raises(ConfigError, match="found: none"):
        choose({}, "a")


def test_a_symlink_to_a_database_already_found_is_left_out(tmp_path: Path) -> None:
    """Two names for one file would be two members syncing it into two collections: the second
    name (a symlink) is left out; a symlink to a file found under no other name is a database."""
    folder = tmp_path / "tenants"
    folder.mkdir()
    make_db(folder / "acme.db")
    (folder / "acme2.db").symlink_to("acme.db")
    elsewhere = make_db(tmp_path / "other.db")
    (folder / "linked.db").symlink_to(elsewhere)
    found, left_out = database_files(databases_in(folder))
    assert found == {"acme": folder / "acme.db", "linked": folder / "linked.db"}
    assert left_out == [f"{folder / 'acme2.db'}: the same file as {folder / 'acme.db'}; left out"]


def test_dot_files_match_only_a_pattern_starting_with_a_dot(tmp_path: Path) -> None:
    """As a shell's glob: `*.db` is not `.hidden.db` (a hidden file: a copy tool's temporary
    one, say, renamed to its real name once complete); `.*.db` is."""
    make_db(tmp_path / "acme.db")
    make_db(tmp_path / ".hidden.db")
    assert not matches(databases_in(tmp_path), ".hidden.db")
    assert not matches(databases_in(tmp_path, "*"), ".hidden.db")
    assert matches(databases_in(tmp_path, ".*.db"), ".hidden.db")
    found, left_out = database_files(databases_in(tmp_path))
    assert found == {"acme": tmp_path / "acme.db"} and left_out == []
    found, _ = database_files(databases_in(tmp_path, ".*.db"))
    assert list(found.values()) == [tmp_path / ".hidden.db"]
