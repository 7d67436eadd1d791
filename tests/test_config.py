import dataclasses
import re
import tomllib

import pytest

from spkrec.models.config import Config, apply_overrides, from_dict, load_config
from spkrec.models.errors import ConfigError

from conftest import REPO, spkrec


def test_shipped_config_states_exactly_the_defaults():
    shipped = tomllib.loads((REPO / "config.toml").read_text())
    assert shipped == dataclasses.asdict(Config())


def test_every_shipped_key_is_commented():
    lines = (REPO / "config.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_0-9]+\s*=", line):
            # a comment directly above, or above a run of keys that share one comment
            j = i - 1
            while j >= 0 and re.match(r"^[a-z_0-9]+\s*=", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"config.toml key without comment: {line}"


def test_user_file_is_merged_over_defaults(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nepochs = 7\n[train.augment]\nnoise_prob = 0.0\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 7 and cfg.train.augment.noise_prob == 0.0
    assert cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize("text, key", [
    ("[train]\nepoch = 3\n", "train.epoch"),
    ("[train]\nepochs = 'many'\n", "train.epochs"),
    ("[train]\nlr = -1.0\n", "train.lr"),
    ("[model]\nprovider = 'tpu'\n", "model.provider"),
    ("[train.augment]\nsnr_db = [20.0, 5.0]\n", "train.augment.snr_db"),
    ("[train]\nhop_s = 3.0\n", "train.hop_s"),
    ("[nope]\nx = 1\n", "nope"),
])
def test_bad_values_name_their_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config(path)


def test_lookup_order_flag_env_xdg_etc_and_never_the_working_directory(tmp_path, monkeypatch):
    """--config > $SPKREC_CONFIG > $XDG_CONFIG_HOME/spkrec/config.toml > /etc/spkrec/config.toml."""
    from spkrec.models import config as config_module

    files = {}
    for name, epochs in (("flag", 10), ("env", 11), ("xdg", 12), ("etc", 13), ("cwd", 14)):
        files[name] = tmp_path / name / ("spkrec" if name == "xdg" else "") / "config.toml"
        files[name].parent.mkdir(parents=True, exist_ok=True)
        files[name].write_text(f"[train]\nepochs = {epochs}\n")
    monkeypatch.chdir(files["cwd"].parent)
    monkeypatch.setenv("SPKREC_CONFIG", str(files["env"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG", files["etc"])
    assert load_config(files["flag"]).train.epochs == 10
    assert load_config().train.epochs == 11
    monkeypatch.delenv("SPKREC_CONFIG")
    assert load_config().train.epochs == 12
    files["xdg"].unlink()
    cfg = load_config()
    assert cfg.train.epochs == 13 and cfg.file == files["etc"]
    files["etc"].unlink()
    cfg = load_config()
    assert cfg.train.epochs == Config().train.epochs and cfg.file is None  # ./config.toml was not read


def test_spkrec_config_prints_the_merged_values_and_their_origins(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text('[model]\nthreads = 3\n[inputs.front]\ndevice = "USB"\n[inputs.front.door]\nmin_voiced_s = 2.5\n')
    (tmp_path / "config.toml").write_text("[train]\nepochs = 99\n")  # a stray file in the working directory
    done = spkrec("config", "--config", str(mine), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(re.fullmatch(rf"threads = 3 +# {re.escape(str(mine))}", line) for line in lines), done.stdout
    assert any(re.fullmatch(r"provider = \"auto\" +# default", line) for line in lines)
    assert any(re.fullmatch(rf"min_voiced_s = 2.5 +# {re.escape(str(mine))}", line) for line in lines)
    assert "./config.toml is not read" in done.stdout
    printed = tomllib.loads(done.stdout)  # the output is TOML that loads back to the same configuration
    assert from_dict(printed) == load_config(mine)
    assert printed["train"]["epochs"] == Config().train.epochs
    plain = spkrec("config", "--plain", "--config", str(mine), cwd=tmp_path)
    assert "#" not in plain.stdout and tomllib.loads(plain.stdout) == printed
    bad = tmp_path / "bad.toml"
    bad.write_text('[metrics]\nlisten = "localhost"\n')
    done = spkrec("config", "--config", str(bad))
    assert done.returncode == 2 and "'metrics.listen'" in done.stderr and len(done.stderr.splitlines()) == 1


def test_flags_override_and_are_validated():
    cfg = Config()
    apply_overrides(cfg, {"train.epochs": 9, "train.lr": None})
    assert cfg.train.epochs == 9 and cfg.train.lr == 1e-3
    with pytest.raises(ConfigError, match="train.batch_size"):
        apply_overrides(cfg, {"train.batch_size": 0})


def test_broken_config_is_one_line_error_on_cli(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[train\nepochs = 3\n")
    done = spkrec("identify", "x.wav", "--config", str(bad))
    assert done.returncode == 2
    assert done.stderr.startswith("spkrec: error:") and "not valid TOML" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_threshold_prefers_the_gallery_calibration_under_auto():
    from spkrec.models.thresholds import resolve

    cfg = load_config(None)
    model = {"eer": 0.4, "far1": 0.7}
    calibrated = {"threshold": 0.55}
    assert cfg.decision.operating_point == "auto"
    assert resolve(cfg.decision, model).threshold == 0.4 and resolve(cfg.decision, model, calibrated).threshold == 0.55
    cfg.decision.operating_point = "far1"
    assert resolve(cfg.decision, model, calibrated).threshold == 0.7
    cfg.decision.operating_point = "calibrated"
    with pytest.raises(ConfigError, match="spkrec calibrate"):
        resolve(cfg.decision, model)


def test_a_parts_section_is_validated_like_the_core_and_per_input_where_it_allows(tmp_path):
    """[door] is the door's own section (daemon.door.config), registered, not written into the
    loader: its keys, ranges and per-input overrides are still checked with the key named."""
    from spkrec.daemon.door.config import DoorConfig, door_for

    mine = tmp_path / "mine.toml"
    mine.write_text('[door]\nvisit_s = 6.0\n[inputs.front]\ndevice = "USB"\n[inputs.front.door]\nvisit_s = 10.0\n'
                    'max_visit_s = 30.0\n')
    cfg = load_config(mine)
    assert isinstance(cfg.door, DoorConfig) and cfg.door.visit_s == 6.0
    front, back = door_for(cfg, "front"), door_for(cfg, "back")
    assert front.visit_s == 10.0 and front.max_visit_s == 30.0 and back.visit_s == 6.0
    for text, key in (('[inputs.front]\ndevice = "USB"\n[inputs.front.door]\nvisit_s = 0\n', "inputs.front.door.visit_s"),
                      ('[inputs.front]\ndevice = "USB"\n[inputs.front.door]\nvisit_s = 25.0\n',
                       "inputs.front.door.visit_s"),
                      ('[inputs.front]\ndevice = "USB"\n[inputs.front.door]\nwins = 3\n', "inputs.front.door.wins"),
                      ('[inputs.front]\ndevice = "USB"\n[inputs.front.meeting]\nmax_speakers = 3\n',
                       "inputs.front.meeting"),
                      ("[metrics]\nlisten = 'nowhere'\n", "metrics.listen")):
        mine.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
            load_config(mine)


def test_the_old_one_voice_bar_is_gone_with_a_pointer_to_the_new_one(tmp_path):
    """`[enroll] min_consistency` measured something the check no longer computes: a config that
    still sets it is refused in one line naming the key that replaced it, not silently ignored."""
    mine = tmp_path / "mine.toml"
    mine.write_text("[enroll]\nmin_consistency = 0.3\n")
    with pytest.raises(ConfigError, match=r"'enroll.min_consistency' is gone.*enroll.same_voice_cosine"):
        load_config(mine)
    mine.write_text("[enroll]\nsame_voice_cosine = 0.5\n")
    assert load_config(mine).enroll.same_voice_cosine == 0.5
