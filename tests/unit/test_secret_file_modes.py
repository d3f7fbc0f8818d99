"""Secret files (the API key file, the KMS token) that others may read or change are used with a
warning naming the file and the fix (docs/security.md: 0600, or 0640 with the service's group)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from cdc_daemon.errors import ConfigError
from cdc_daemon.secret_files import read_secret_file


@pytest.mark.parametrize(("mode", "warned"), [
    (0o600, False), (0o640, False), (0o400, False), (0o700, False),
    (0o644, True), (0o660, True), (0o602, True), (0o666, True),
])
def test_a_secret_file_open_to_others_is_warned_about(tmp_path: Path, mode: int,
                                                      warned: bool) -> None:
    secret = tmp_path / "kms.token"
    secret.write_text("token\n")
    secret.chmod(mode)
    with structlog.testing.capture_logs() as logs:
        assert read_secret_file(secret, "typesense.kms.token_file", ConfigError) == "token"
    expected = [{
        "event": "secret file open to other users", "log_level": "warning",
        "key": "typesense.kms.token_file", "path": str(secret), "mode": f"{mode:04o}",
        "fix": f"chmod 0600 {secret} (or 0640 with the service's group)",
    }]
    assert logs == (expected if warned else [])
