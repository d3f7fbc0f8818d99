"""The Typesense key from a KMS: fetched at start, refreshed on a timer and at once on a 401
(single flight), live rotation against the real Typesense without losing or dead-lettering a
change, an unreachable KMS, and keys/tokens never printed."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Env,
    app_write,
    expected_elements,
    insert_elements,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.config import KmsConfig
from cdc_daemon.errors import KmsUnavailable
from cdc_daemon.localserver import LocalTypesense, free_port
from cdc_daemon.wiring import kms_key
from security.helpers import (
    KmsServer,
    create_scoped_key,
    delete_key,
    key_works,
)

TOKEN = "kms-token-7f3a9c2e41"


@pytest.fixture
def kms() -> Iterator[KmsServer]:
    server = KmsServer(TOKEN, {}).start()
    yield server
    server.stop()


def kms_config(env: Env, kms: KmsServer, refresh_interval: float = 3600) -> dict[str, object]:
    token_file = env.tmp / "kms.token"
    token_file.write_text(f"  {TOKEN}\n")  # surrounding whitespace is ignored
    token_file.chmod(0o600)
    return {
        "nodes": [env.typesense.url],
        "kms": {"url": kms.url, "key_name": "svc", "token_file": "kms.token",
                "refresh_interval": refresh_interval},
        "timeout": 10,
    }


def metric(port: int, name: str, **labels: str) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return -1.0  # not listening yet
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_single_flight_refresh_on_401(tmp_path: Path, kms: KmsServer) -> None:
    """Many requests refused together cost one fetch; a refusal of a replaced key costs none."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    kms.set_key("svc", "key-number-one")
    keys = kms_key(KmsConfig(url=kms.url, key_name="svc", token_file=token), timeout=5)
    try:
        assert keys() == "key-number-one"
        assert kms.count() == 1
        kms.set_key("svc", "key-number-two")
        keys._fetched_at -= 10  # as if fetched a while ago
        barrier = threading.Barrier(8)

        def refused() -> None:
            barrier.wait()
            keys.rejected("key-number-one")

        threads = [threading.Thread(target=refused) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert kms.count() == 2
        assert keys() == "key-number-two"
        keys.rejected("key-number-one")  # already replaced
        assert kms.count() == 2
        assert keys.stats().fetches == {("start", "ok"): 1, ("rejected", "ok"): 1}
    finally:
        keys.close()


def test_fetch_errors_never_show_the_token_or_a_key(tmp_path: Path, kms: KmsServer) -> None:
    token = tmp_path / "token"
    token.write_text("wrong-token-123456")
    keys = kms_key(KmsConfig(url=kms.url, key_name="svc", token_file=token), timeout=5)
    try:
        with pytest.raises(KmsUnavailable, match=r"typesense\.kms: .*HTTP 401") as caught:
            keys()
        assert "wrong-token" not in str(caught.value)
        token.write_bytes(b"\xff\xfe")
        with pytest.raises(KmsUnavailable, match=r"token_file: cannot read .*not UTF-8"):
            keys()
    finally:
        keys.close()


def test_rotation_against_real_typesense(elements_env: Env, typesense: LocalTypesense,
                                         kms: KmsServer) -> None:
    """Key A → sync → key B issued, KMS switched to B, A deleted in Typesense → the daemon's next
    request gets 401, fetches B at once, retries the batch: everything converges, nothing is
    dead-lettered, and no key or token appears in the log or the metrics."""
    env = elements_env
    id_a, key_a = create_scoped_key(typesense, "cdc test key A")
    kms.set_key("svc", key_a)
    metrics_port = free_port()
    config_path = env.config_path
    config = yaml.safe_load(config_path.read_text())
    config["typesense"] = kms_config(env, kms)
    config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    config_path.write_text(yaml.safe_dump(config))

    daemon = start_daemon_logged(env)
    try:
        insert_elements(env.db, range(1, 41))
        wait_for(lambda: env.documents("elements") == expected_elements(env.db), 30,
                 message="first rows synced with key A")
        fetched_before = kms.count("svc")
        assert fetched_before == 1

        id_b, key_b = create_scoped_key(typesense, "cdc test key B")
        kms.set_key("svc", key_b)
        delete_key(typesense, id_a)
        assert not key_works(typesense, key_a)

        insert_elements(env.db, range(41, 81), comment="after rotation")
        app_write(env.db, [[("UPDATE elements SET comment = 'changed' WHERE id <= 10", [])],
                           [("DELETE FROM elements WHERE id BETWEEN 11 AND 15", [])]])
        wait_for(lambda: env.documents("elements") == expected_elements(env.db), 60,
                 message="rows written after the rotation synced with key B")
        assert kms.count("svc") >= 2  # asked again
        assert wait_for(lambda: metric(metrics_port, "cdc_kms_fetches_total",
                                       reason="rejected", result="ok") >= 1, 10)
        assert metric(metrics_port, "cdc_kms_up") == 1
        # The refused request was sent again at once with key B: not even a failed iteration.
        assert metric(metrics_port, "cdc_sync_errors_total", kind="auth_error") == 0
        metrics_text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        status = env.status()
        assert status["dead_letters"] == 0
        assert status["backlog"] == 0
    finally:
        rc = stop_process(daemon)
    assert rc == 0
    log = read_daemon_log(env)
    assert "refused the api key" in log
    for secret in (key_a, key_b, TOKEN):
        assert secret not in log
        assert secret not in metrics_text
        assert secret not in str(status)
    delete_key(typesense, id_b)


def test_kms_unreachable_at_start(elements_env: Env, typesense: LocalTypesense) -> None:
    """`check` exits 1 naming the KMS; `run` retries with backoff, says so in its log and its
    metrics, and syncs once the KMS answers. A short refresh_interval asks the KMS again."""
    env = elements_env
    kms = KmsServer(TOKEN, {"svc": "unused"}, port=free_port())  # not started: refused
    config = yaml.safe_load(env.config_path.read_text())
    config["typesense"] = kms_config(env, kms, refresh_interval=1)
    metrics_port = free_port()
    config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    env.config_path.write_text(yaml.safe_dump(config))

    check = env.cli("check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"typesense.kms: {kms.url}/keys/svc: unreachable" in check.stdout
    assert "Traceback" not in check.stderr

    id_a, key_a = create_scoped_key(typesense, "cdc test key (unreachable KMS)")
    kms.set_key("svc", key_a)
    insert_elements(env.db, range(1, 11))
    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: metric(metrics_port, "cdc_kms_fetches_total", reason="start",
                                result="error") >= 2, 30, message="failed fetches counted")
        assert metric(metrics_port, "cdc_kms_up") == 0
        assert env.documents("elements") == {}
        kms.start()
        wait_for(lambda: env.documents("elements") == expected_elements(env.db), 60,
                 message="synced once the KMS answers")
        before = kms.count("svc")
        wait_for(lambda: kms.count("svc") >= before + 2, 10, message="refreshed on its timer")
        assert metric(metrics_port, "cdc_kms_fetches_total", reason="interval", result="ok") >= 1
    finally:
        rc = stop_process(daemon)
        kms.stop()
    assert rc == 0
    log = read_daemon_log(env)
    assert "kms fetch failed" in log and "unreachable" in log
    assert key_a not in log and TOKEN not in log
    delete_key(typesense, id_a)


def test_a_schema_change_keeps_the_key_source_and_the_client(
    elements_env: Env, typesense: LocalTypesense, kms: KmsServer
) -> None:
    """The runtime's two halves (wiring.py): an app migration (ALTER TABLE from the app's own
    process), and a reload that leaves the `typesense:` section alone, rebuild only the tables
    half; the key source and the Typesense client (node health, alias cache) are kept, so the
    KMS is not asked again."""
    env = elements_env
    key_id, key = create_scoped_key(typesense, "cdc test key (schema change)")
    kms.set_key("svc", key)
    config = yaml.safe_load(env.config_path.read_text())
    config["typesense"] = kms_config(env, kms)
    env.config_path.write_text(yaml.safe_dump(config))

    def synced() -> bool:
        return env.documents("elements") == expected_elements(env.db)

    daemon = start_daemon_logged(env)
    try:
        insert_elements(env.db, range(1, 21))
        wait_for(synced, 60, message="first rows synced")
        assert kms.count("svc") == 1

        app_write(env.db, [[("ALTER TABLE elements ADD COLUMN extra TEXT", [])]])
        wait_for(lambda: '"schema changed"' in read_daemon_log(env), 30,
                 message="the daemon rebuilt its tables half")
        insert_elements(env.db, range(21, 41), comment="after the migration")
        wait_for(synced, 60, message="rows written after the migration synced")
        assert kms.count("svc") == 1  # a whole new runtime fetched the key again here

        daemon.send_signal(signal.SIGHUP)  # the same config: `typesense:` unchanged
        wait_for(lambda: '"config reloaded"' in read_daemon_log(env), 30, message="reloaded")
        insert_elements(env.db, range(41, 51), comment="after the reload")
        wait_for(synced, 60, message="rows written after the reload synced")
        assert kms.count("svc") == 1
    finally:
        rc = stop_process(daemon)
        delete_key(typesense, key_id)
    assert rc == 0, read_daemon_log(env)
