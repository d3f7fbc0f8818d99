"""The seed's elements table end to end: install → app writes → run --once → verify."""

from support import Env, app_exec, insert_elements


def test_elements_round_trip(elements_env: Env) -> None:
    env = elements_env
    insert_elements(env.db, range(1, 101))
    app_exec(env.db, "UPDATE elements SET comment = 'changed' WHERE id <= 10",
             "DELETE FROM elements WHERE id > 95", "UPDATE elements SET id = 1000 WHERE id = 5")
    env.cli("run", "--once", check=True)
    docs = env.documents("elements")
    assert len(docs) == 95
    assert "5" not in docs and docs["1000"]["comment"] == "changed"
    assert docs["1"] == {**docs["1"], "id": "1", "element_type": "note", "element_id": 1,
                         "sequence_number": 1, "version_number": 1, "comment": "changed"}
    report = env.verify()
    assert report["in_sync"] is True and report["tables"]["elements"]["rows"] == 95
    assert env.status()["backlog"] == 0
