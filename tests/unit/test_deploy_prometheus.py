"""deploy/prometheus: the rendered config passes `promtool check config`, the rules pass
`promtool check rules`, and `promtool test rules` has a firing and a quiet case for
every alert. promtool runs as a subprocess (the Debian `prometheus` package)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_files import (
    PROMETHEUS_DIR,
    RULE_FILES,
    RULE_TESTS,
    RULES_DIR,
    alert_rules,
    binary,
    load_script,
    recording_rules,
)

render = load_script(PROMETHEUS_DIR / "render.py")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def install(tmp_path: Path) -> Path:
    """A DCSCHED_HOME as a running server leaves it: its token file."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text("secret\n")
    return home


def test_a_rendered_config_passes_promtool(tmp_path: Path) -> None:
    home = install(tmp_path)
    settings = render.Settings(dcsched_home=str(home), rules_dir=str(RULES_DIR))
    config = tmp_path / "prometheus.yml"
    config.write_text(render.render(settings))
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "2 rule files found" in done.stdout


def test_the_shipped_config_is_the_render_of_its_placeholders() -> None:
    shipped = PROMETHEUS_DIR / "prometheus.yml"
    assert shipped.read_text() == render.render(render.Settings()), (
        "deploy/prometheus/prometheus.yml differs from render.py's output: regenerate it "
        "with `python3 -c 'import render; print(render.render(render.Settings()), end=\"\")'`"
    )
    # Its placeholder paths do not exist here, so only the syntax can be checked.
    done = promtool("check", "config", "--syntax-only", str(shipped))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_config_scrapes_server_exporters_and_ray(tmp_path: Path) -> None:
    settings = render.Settings(
        dcsched_home="/srv/dcsched",
        server_url="http://10.0.0.5:8765",
        ray_temp_dir="/data/ray",
        alertmanagers=("am:9093",),
        extra_exporter_files=("/etc/prometheus/more-exporters.json",),
    )
    config = yaml.safe_load(render.render(settings))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"dcsched-server", "dcsched-node", "dcsched-serving", "ray"}
    assert jobs["dcsched-serving"]["file_sd_configs"][0]["files"] == [
        "/srv/dcsched/prometheus/serving.json"
    ]
    server = jobs["dcsched-server"]
    assert server["static_configs"] == [{"targets": ["10.0.0.5:8765"]}]
    assert server["metrics_path"] == "/metrics"
    assert server["authorization"] == {"type": "Bearer", "credentials_file": "/srv/dcsched/token"}
    assert jobs["dcsched-node"]["file_sd_configs"][0]["files"] == [
        "/srv/dcsched/prometheus/exporters.json",
        "/etc/prometheus/more-exporters.json",
    ]
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [
        "/data/ray/prom_metrics_service_discovery.json"
    ]
    # the exporter's own `node` yields to the target's (the Ray node id)
    relabel = jobs["dcsched-node"]["metric_relabel_configs"]
    assert relabel == [{"regex": "exported_node", "action": "labeldrop"}]
    # a replica's own deployment and replica labels are the file's (no exported_* copies)
    relabel = jobs["dcsched-serving"]["metric_relabel_configs"]
    assert relabel == [{"regex": "exported_(deployment|replica)", "action": "labeldrop"}]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["am:9093"]


def test_a_short_scrape_interval_gets_a_timeout_no_longer(tmp_path: Path) -> None:
    home = install(tmp_path)
    settings = render.Settings(
        dcsched_home=str(home), rules_dir=str(RULES_DIR), scrape_interval="1s"
    )
    text = render.render(settings)
    assert "scrape_interval: 1s" in text and "scrape_timeout: 1s" in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_script_reads_this_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = install(tmp_path)
    (home / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9999"}))
    (home / "ray").mkdir()
    (home / "ray" / "head.json").write_text(json.dumps({"temp_dir": "/tmp/dcsched-ray-x"}))
    out = tmp_path / "prometheus.yml"
    assert render.main(["--dcsched-home", str(home), "-o", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["dcsched-server"]["static_configs"][0]["targets"] == ["127.0.0.1:9999"]
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [
        "/tmp/dcsched-ray-x/prom_metrics_service_discovery.json"
    ]
    assert config["rule_files"] == [str(RULES_DIR / "recording.yml"), str(RULES_DIR / "alerts.yml")]
    assert jobs["dcsched-server"]["authorization"]["credentials_file"] == str(home / "token")
    done = promtool("check", "config", str(out))
    assert done.returncode == 0, done.stdout + done.stderr

    # Without server.json or head.json: the defaults.
    bare = tmp_path / "bare"
    bare.mkdir()
    assert render.main(["--dcsched-home", str(bare), "--token-file", "/etc/prometheus/tok"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    targets = {j["job_name"]: j for j in printed["scrape_configs"]}
    assert targets["dcsched-server"]["static_configs"][0]["targets"] == ["127.0.0.1:8765"]
    assert targets["dcsched-server"]["authorization"]["credentials_file"] == "/etc/prometheus/tok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scrape-interval", "fast"], "'fast' is not a duration"),
        (["--server-url", "ftp://host:21"], "is not http(s)://host:port"),
    ],
)
def test_the_script_refuses_bad_values(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        render.main(["--dcsched-home", str(tmp_path), *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_pass_promtool_check(path: Path) -> None:
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_rule_tests_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases: dict[str, dict[str, int]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "firing" if case.get("exp_alerts") else "quiet"
            counts = cases.setdefault(case["alertname"], {"firing": 0, "quiet": 0})
            counts[kind] += 1
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts, "no alerts found"
    untested = sorted(a for a in alerts if cases.get(a, {}).get("firing", 0) == 0)
    assert not untested, f"alerts without a firing case in {RULE_TESTS.name}: {untested}"
    never_quiet = sorted(a for a in alerts if cases[a]["quiet"] == 0)
    assert not never_quiet, f"alerts without a non-firing case: {never_quiet}"
    unknown = sorted(set(cases) - alerts)
    assert not unknown, f"rule tests name alerts that do not exist: {unknown}"


def _alerts_by_name() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in alert_rules()}


def test_alerts_say_what_happened_and_what_to_do() -> None:
    for name, rule in _alerts_by_name().items():
        assert name.startswith("Dcsched"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and len(annotations["description"]) > 150, name


def test_the_alerts_the_issue_asks_for_exist() -> None:
    alerts = _alerts_by_name()
    idle = alerts["DcschedGPUAllocatedIdle"]
    assert idle["for"] == "15m" and "< 0.1" in idle["expr"]
    pending = alerts["DcschedJobsPendingWhileGPUsFree"]
    assert pending["for"] == "15m" and "dcsched_queue_pending_gpus" in pending["expr"]
    assert "fragmentation or quota" in pending["annotations"]["description"]
    assert "dcsched_gpu_temperature_celsius" in alerts["DcschedGPUHot"]["expr"]
    assert "dcsched_gpu_xid_errors_total" in alerts["DcschedGPUXidError"]["expr"]
    assert 'up{job="dcsched-node"} == 0' in alerts["DcschedExporterDown"]["expr"]
    assert "dcsched_cluster_node_capacity" in alerts["DcschedNodeDown"]["expr"]
    scheduler = alerts["DcschedSchedulerDown"]["expr"]
    assert 'up{job="dcsched-server"} == 0' in scheduler
    assert 'absent(up{job="dcsched-server"})' in scheduler


def test_recording_rules_are_named_level_metric_operations() -> None:
    for name in recording_rules():
        assert re.fullmatch(r"[a-z_]+:dcsched_[a-z0-9_]+:[a-z0-9_]+", name), name
