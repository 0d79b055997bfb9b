"""The plugin's configuration, the ``orthanc-config`` command and the durable queue (no Orthanc)."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import pytest
from click.testing import CliRunner

from medcbir.cli.main import cli, main
from medcbir.errors import ConfigError
from medcbir.pacs.instance_queue import InstanceQueue
from medcbir.pacs.orthanc_config import PluginSettings, build_config, instance_of, instance_uri


def test_orthanc_config_writes_a_complete_private_config(tmp_path):
    out = tmp_path / "conf" / "orthanc.json"
    result = CliRunner().invoke(cli, ["orthanc-config", str(out), "--index", str(tmp_path / "idx"), "--encoder", "default",
                                      "--http-port", "8050", "--dicom-port", "4250", "--user", "admin:pw"])
    assert result.exit_code == 0, result.output
    assert f"Orthanc {out}" in result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # it holds a password
    config = json.loads(out.read_text())
    assert config["HttpPort"] == 8050 and config["DicomPort"] == 4250 and config["DicomAet"] == "MEDCBIR"
    assert config["RemoteAccessAllowed"] is False and config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"admin": "pw"}
    assert any(p.endswith("libOrthancPython.so") for p in config["Plugins"])
    assert os.path.isfile(config["PythonScript"]) and config["PythonScript"].endswith("medcbir/pacs/orthanc_plugin.py")
    section = config["Medcbir"]
    settings = PluginSettings.from_section(section)
    assert settings.index == str((tmp_path / "idx").resolve()) and settings.encoder == "default"
    assert os.path.isfile(os.path.join(settings.repo, "medcbir", "pacs", "worker.py"))
    assert os.access(settings.python, os.X_OK) and os.path.isdir(settings.site_packages)
    assert settings.queue_path.name == "orthanc-queue.sqlite"


@pytest.mark.parametrize("args, message", [
    (["--remote"], "--remote needs --user"),
    (["--user", "nopassword"], "NAME:PASSWORD"),
    (["--aet", "A-TITLE-LONGER-THAN-16"], "AE title"),
])
def test_orthanc_config_rejects_bad_options_in_one_line(tmp_path, capsys, args, message):
    code = main(["orthanc-config", str(tmp_path / "o.json"), "--index", str(tmp_path / "i"), "--encoder", "default", *args])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o.json").exists()


def test_missing_encoder_and_bad_section_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "i", str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match='"Index"'):
        PluginSettings.from_section({"Encoder": "default"})
    with pytest.raises(ConfigError, match="batch_size"):
        PluginSettings.from_section({"Index": "/x", "BatchSize": 0})
    assert PluginSettings.from_section({"Index": "/x", "Window": "ct-lung"}).window == ["ct-lung"]
    assert instance_of(instance_uri("ab-cd")) == "ab-cd" and instance_of("/data/x.dcm") is None


def test_queue_claims_skips_and_requeues(tmp_path):
    q = InstanceQueue(tmp_path / "q.sqlite")
    assert q.enqueue(["a", "b", "c", "a"]) == 3          # idempotent per id
    assert q.claim(2) == ["a", "b"]
    assert q.counts() == {"queued": 1, "in_flight": 2, "skipped": {}}
    q.done(["a"])
    q.skip("c", "no-pixel-data", "SR")
    assert q.enqueue(["c"]) == 0                          # a skipped id is not queued again...
    assert q.counts() == {"queued": 0, "in_flight": 1, "skipped": {"no-pixel-data": 1}}
    assert q.requeue_in_flight() == 1                     # ...and a crashed claim comes back
    assert q.claim(10) == ["b"]
    assert q.clear_skipped() == ["c"] and q.enqueue(["c"]) == 1
    q.close()
    reopened = InstanceQueue(tmp_path / "q.sqlite")       # durable across processes/restarts
    assert reopened.counts() == {"queued": 1, "in_flight": 1, "skipped": {}}


def _produce(path, start):
    q = InstanceQueue(path)
    q.enqueue([f"id-{i}" for i in range(start, start + 200)])
    q.close()


def test_queue_is_safe_between_processes(tmp_path):
    path = tmp_path / "q.sqlite"
    InstanceQueue(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_produce, args=(path, n * 100)) for n in range(3)]  # overlapping ranges
    for p in procs:
        p.start()
    consumer = InstanceQueue(path)
    claimed = []
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    while batch := consumer.claim(37):
        claimed.extend(batch)
    assert sorted(claimed) == sorted({f"id-{i}" for i in range(0, 400)})


def test_regions_setting_decides_whether_a_new_index_stores_regions(tmp_path, small_encoder):
    """``"Regions"`` (default true; ``orthanc-config --no-regions`` writes false) is what the worker
    opens a *new* index with; an existing index keeps what it was built with."""
    from medcbir.pacs.worker import Worker

    out = tmp_path / "o.json"
    for flags, wanted in (([], True), (["--no-regions"], False)):
        result = CliRunner().invoke(cli, ["orthanc-config", str(out), "--index", str(tmp_path / "idx"), "--encoder", "default", *flags])
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["Medcbir"]["Regions"] is wanted
    assert PluginSettings.from_section({"Index": "/x"}).regions is True
    with pytest.raises(ConfigError, match="Regions must be true or false"):
        PluginSettings.from_section({"Index": "/x", "Regions": "no"})

    for regions in (True, False):
        section = {"Index": str(tmp_path / f"new-{regions}"), "Encoder": str(small_encoder), "Regions": regions}
        worker = Worker(PluginSettings.from_section(section), rest=None)
        worker.open_writer()
        assert bool(worker.writer.regions) is regions
        worker.writer.close()
    # an index built with regions keeps them whatever the setting says (and one built without stays without)
    for built, setting in ((True, False), (False, True)):
        from medcbir.indexer import IndexWriter

        folder = tmp_path / f"built-{built}"
        writer = IndexWriter.open(folder, str(small_encoder), regions=built)
        writer.commit()
        writer.close()
        worker = Worker(PluginSettings.from_section({"Index": str(folder), "Encoder": str(small_encoder), "Regions": setting}), rest=None)
        worker.open_writer()
        assert bool(worker.writer.regions) is built
        worker.writer.close()


def test_worker_refuses_a_window_the_encoder_was_not_trained_with(tmp_path, small_encoder):
    from medcbir.errors import MedcbirError
    from medcbir.pacs.worker import Worker

    settings = PluginSettings.from_section({"Index": str(tmp_path / "idx"), "Encoder": str(small_encoder), "Window": "ct-lung"})
    worker = Worker(settings, rest=None)
    with pytest.raises(MedcbirError, match="preprocessing is part of the model"):
        worker.open_writer()

    same = PluginSettings.from_section({"Index": str(tmp_path / "idx"), "Encoder": str(small_encoder), "Window": ["ct-liver-wide"]})
    ok = Worker(same, rest=None)
    ok.open_writer()
    assert ok.encoder_info["preprocessing"]["windows"] == ["ct-liver-wide"]
    ok.writer.close()


def test_a_failed_fetch_is_retried_not_skipped(tmp_path):
    from medcbir.pacs.orthanc_rest import OrthancRest
    from medcbir.pacs.orthanc_server import free_port
    from medcbir.pacs.worker import RETRY, Worker

    settings = PluginSettings.from_section({"Index": str(tmp_path / "idx")})
    worker = Worker(settings, rest=OrthancRest(f"http://127.0.0.1:{free_port()}", timeout=2))  # nobody listens

    class NothingIndexed:
        key = b"k" * 32

        def has_source(self, uri):
            return False

    worker.writer = NothingIndexed()
    abc = "abcdef01-23456789-abcdef01-23456789-abcdef01"
    instance, decoded, reason, detail = worker._fetch_decode(abc)
    assert (instance, decoded, reason) == (abc, None, RETRY) and "cannot reach Orthanc" in detail
    worker.queue.enqueue([abc])
    assert worker.queue.claim(5) == [abc]
    worker.queue.release([abc])
    assert worker.queue.counts() == {"queued": 1, "in_flight": 0, "skipped": {}}
