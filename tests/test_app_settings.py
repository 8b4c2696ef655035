"""The app's settings: environment variables, with app.yaml's `dermseg:` section as defaults inside a MAP."""

import pytest
import yaml

from monai_app.pacs import SendOptions, TargetError
from monai_app.settings import (
    APP_CONFIG_SECTION,
    AppSettings,
    apply_app_config_defaults,
    send_options_from_env,
    threshold_from_env,
)
from operators.confidence import DEFAULT_THRESHOLD

from _app_helpers import REPO, SAMPLES, make_tiny_model, read_results, run_app


def write_config(path, section):
    path.write_text(yaml.safe_dump({"application": {"title": "t", "version": "1"}, "resources": {}, APP_CONFIG_SECTION: section}))
    return path


def test_config_section_gives_defaults_and_the_environment_wins(tmp_path):
    config = write_config(tmp_path / "app.yaml", {"DERMSEG_SEND_TO": "dicom://PACS@pacs:104", "DERMSEG_CONFIDENCE_THRESHOLD": 0.5})
    environ = {"HOLOSCAN_CONFIG_PATH": str(config), "DERMSEG_CONFIDENCE_THRESHOLD": "0.7"}
    applied = apply_app_config_defaults(environ)
    assert applied == {"DERMSEG_SEND_TO": "dicom://PACS@pacs:104"}
    settings = AppSettings.from_env(environ)
    assert settings.send_to == "dicom://PACS@pacs:104" and settings.confidence_threshold == 0.7


def test_no_config_or_no_section_changes_nothing(tmp_path):
    assert apply_app_config_defaults({}) == {}
    environ = {"HOLOSCAN_CONFIG_PATH": str(tmp_path / "missing.yaml")}
    assert apply_app_config_defaults(environ) == {} and list(environ) == ["HOLOSCAN_CONFIG_PATH"]


@pytest.mark.parametrize("section", [["DERMSEG_SEND_TO"], {"SEND_TO": "x"}])
def test_a_malformed_section_is_a_clear_error(tmp_path, section):
    config = write_config(tmp_path / "app.yaml", section)
    with pytest.raises(ValueError, match="DERMSEG_"):
        apply_app_config_defaults({"HOLOSCAN_CONFIG_PATH": str(config)})


def test_shipped_app_yaml_section_is_valid_and_sends_nowhere_by_default():
    environ = {"HOLOSCAN_CONFIG_PATH": str(REPO / "app.yaml")}
    applied = apply_app_config_defaults(environ)
    assert "DERMSEG_SEND_TO" in applied
    assert AppSettings.from_env(environ).send_to is None


def test_the_app_reads_its_settings_from_the_config_file(tmp_path):
    config = write_config(tmp_path / "app.yaml", {"DERMSEG_CONFIDENCE_THRESHOLD": 1.0})
    model = make_tiny_model(tmp_path / "tiny.ts")
    result = run_app(SAMPLES / "input", tmp_path / "out", model, {"HOLOSCAN_CONFIG_PATH": str(config)})
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(tmp_path / "out")
    ok = [c for c in results["cases"] if c["status"] == "ok"]
    assert ok and all(c["route"] == "review" for c in ok)
    assert results["settings"]["DERMSEG_CONFIDENCE_THRESHOLD"] == 1.0


def test_model_precision_setting():
    assert AppSettings.from_env({}).model_precision == "int8"
    assert AppSettings.from_env({"DERMSEG_MODEL_PRECISION": "FP32"}).model_precision == "fp32"
    with pytest.raises(ValueError, match="DERMSEG_MODEL_PRECISION='fp16'"):
        AppSettings.from_env({"DERMSEG_MODEL_PRECISION": "fp16"})


def test_confidence_measure_setting():
    assert AppSettings.from_env({}).confidence_measure == "lesion"
    assert AppSettings.from_env({}).for_results()["DERMSEG_CONFIDENCE_MEASURE"] == "lesion"
    with pytest.raises(ValueError, match="DERMSEG_CONFIDENCE_MEASURE='entropy' must be one of lesion"):
        AppSettings.from_env({"DERMSEG_CONFIDENCE_MEASURE": "entropy"})


def test_confidence_threshold_from_env():
    assert threshold_from_env({}) == DEFAULT_THRESHOLD
    assert threshold_from_env({"DERMSEG_CONFIDENCE_THRESHOLD": "0.6"}) == 0.6
    for bad in ("1.5", "-0.1", "high"):
        with pytest.raises(ValueError, match="DERMSEG_CONFIDENCE_THRESHOLD"):
            threshold_from_env({"DERMSEG_CONFIDENCE_THRESHOLD": bad})


def test_send_options_come_from_the_environment_and_are_checked():
    environ = {"DERMSEG_CALLING_AET": "EDGE1", "DERMSEG_SEND_TIMEOUT": "7.5", "DERMSEG_SEND_RETRIES": "4"}
    options = send_options_from_env(environ)
    assert (options.calling_aet, options.timeout, options.retries, options.retry_delay) == ("EDGE1", 7.5, 4, 2.0)
    assert send_options_from_env(environ, retries=0).retries == 0  # an argument beats the environment
    with pytest.raises(TargetError, match="DERMSEG_SEND_RETRIES='many'"):
        send_options_from_env({"DERMSEG_SEND_RETRIES": "many"})
    with pytest.raises(TargetError, match="DERMSEG_SEND_TIMEOUT"):
        send_options_from_env({"DERMSEG_SEND_TIMEOUT": "0"})
    with pytest.raises(TargetError, match="calling AE title"):
        send_options_from_env({"DERMSEG_CALLING_AET": "A" * 17})


def test_the_app_settings_hold_the_send_options_where_there_is_somewhere_to_send():
    sending = {"DERMSEG_SEND_TO": "dicom://PACS@pacs:104", "DERMSEG_SEND_RETRIES": "5", "DERMSEG_DICOMWEB_TOKEN": "t"}
    settings = AppSettings.from_env(sending)
    assert settings.send == SendOptions(retries=5, dicomweb_token="t")
    # nowhere to send: the send options are neither read nor checked, as the app never uses them
    assert AppSettings.from_env({"DERMSEG_SEND_RETRIES": "many"}).send is None
    with pytest.raises(TargetError, match="DICOM port"):
        AppSettings.from_env({"DERMSEG_SEND_TO": "dicom://PACS@pacs"})
    with pytest.raises(TargetError, match="DERMSEG_SEND_RETRIES='many'"):
        AppSettings.from_env({**sending, "DERMSEG_SEND_RETRIES": "many"})
