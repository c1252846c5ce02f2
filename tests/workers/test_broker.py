"""The embedded broker: started and stopped by the CLI, readiness, pid file, stderr filtering, settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnstream.cli.main import main
from rnnstream.workers.embedded_broker import (
    EmbeddedBroker,
    filter_stderr,
    free_port,
    metadata_answered,
    read_pid_file,
)
from rnnstream.workers.kafka_settings import KafkaSettings, KafkaUnreachable


def test_cli_starts_and_stops_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    data = str(tmp_path / "broker")
    assert main(["broker", "start", "--port", str(port), "--data-dir", data]) == 0
    info = read_pid_file(data)
    try:
        assert info is not None and info.port == port
        assert metadata_answered("127.0.0.1", port)
        assert "GLIBC" not in capsys.readouterr().out
        assert main(["broker", "status", "--port", str(port), "--data-dir", data]) == 0
        assert f"127.0.0.1:{port} (answering)" in capsys.readouterr().out
        # a second start on the same data dir is refused with a clear message
        assert main(["broker", "start", "--port", str(port), "--data-dir", data]) == 2
    finally:
        assert main(["broker", "stop", "--data-dir", data]) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(info.pid):
        time.sleep(0.05)
    assert not _alive(info.pid)
    assert not metadata_answered("127.0.0.1", port, timeout_s=0.5)
    assert main(["broker", "status", "--data-dir", data]) == 1


def test_cli_in_subprocess_leaves_no_orphan(tmp_path: Path) -> None:
    """The broker started by a CLI process outlives it (own session) and is stopped by another CLI process."""
    port = free_port()
    data = str(tmp_path / "b")
    cmd = [sys.executable, "-m", "rnnstream.cli.main", "broker"]
    out = subprocess.run(
        [*cmd, "start", "--port", str(port), "--data-dir", data], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "GLIBC" not in out.stdout + out.stderr
    info = read_pid_file(data)
    assert info is not None and metadata_answered("127.0.0.1", port)
    out = subprocess.run([*cmd, "stop", "--data-dir", data], capture_output=True, text=True)
    assert out.returncode == 0 and "stopped" in out.stdout
    assert not _alive(info.pid)


def test_data_survives_sigterm_restart(tmp_path: Path) -> None:
    from kafka import KafkaProducer

    from rnnstream.workers.kafka_io import PartitionConsumer, TopicAdmin

    broker = EmbeddedBroker(tmp_path / "d", port=free_port())
    broker.start()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    try:
        with TopicAdmin(settings) as admin:
            admin.create_topics(["keep"], partitions=1)
        prod = KafkaProducer(**settings.client_kwargs())
        for i in range(50):
            prod.send("keep", value=b"m%d" % i)
        prod.flush()
        prod.close()
    finally:
        broker.stop()
    assert not broker.is_running()
    broker.start()
    try:
        with PartitionConsumer(settings, "keep", [0]) as c:
            assert c.end_offsets() == {0: 50}
    finally:
        broker.stop()


def test_stderr_filter_hides_glibc_warning_only() -> None:
    text = (
        "/x/noida-db: /lib/x86_64-linux-gnu/libc.so.6: weak version `GLIBC_2.39' not found (required by x)\n"
        "\n"
        "error: something real\n"
    )
    assert filter_stderr(text) == ["error: something real"]


def test_unreachable_broker_fails_fast_with_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(KafkaUnreachable, match=f"no broker at 127.0.0.1:{port} .*rnnstream broker start"):
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}").check_reachable()
    rc = main(["topics", "create", "--pipeline", "x", "--bootstrap-servers", f"127.0.0.1:{port}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"no broker at 127.0.0.1:{port} (start one with `rnnstream broker start`)" in err
    assert time.monotonic() - t0 < 5


def test_settings_from_file_and_env_hide_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "kafka.yaml"
    cfg.write_text(
        "kafka:\n  bootstrap_servers: a:9093,b:9093\n  security_protocol: SASL_SSL\n"
        "  sasl_mechanism: PLAIN\n  sasl_plain_username: u\n  sasl_plain_password: filesecret\n"
        "  ssl_cafile: /ca.pem\n"
    )
    env = {"RNNSTREAM_KAFKA_SASL_PLAIN_PASSWORD": "envsecret", "RNNSTREAM_KAFKA_BOOTSTRAP_TIMEOUT_MS": "2000"}
    s = KafkaSettings.load(config_file=cfg, env=env, bootstrap_servers=None)
    kw = s.client_kwargs()
    assert kw["bootstrap_servers"] == ["a:9093", "b:9093"]
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "PLAIN"
    assert kw["sasl_plain_username"] == "u" and kw["sasl_plain_password"] == "envsecret"
    assert kw["ssl_cafile"] == "/ca.pem" and kw["bootstrap_timeout_ms"] == 2000
    assert "envsecret" not in repr(s) and "filesecret" not in repr(s)
    assert "envsecret" not in str(s.redacted())
    s2 = KafkaSettings.load(env={"RNNSTREAM_KAFKA_CONFIG": str(cfg)}, bootstrap_servers="c:1")
    assert s2.servers() == [("c", 1)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False
