"""ServerApp run-config split (no Flower processes)."""

from __future__ import annotations

import pytest

from fedsynth.common.errors import ConfigError
from fedsynth.server.app import split_run_config


def test_server_keys_are_split_from_the_shared_run_config(tmp_path) -> None:
    settings, cfg = split_run_config({"output-dir": str(tmp_path), "schema-path": "s.json",
                                      "num-server-rounds": 4, "aggregator": "median"})
    assert settings.checkpoint_dir == tmp_path / "checkpoint"
    assert cfg.num_server_rounds == 4 and cfg.aggregator == "median"


@pytest.mark.parametrize(("config", "match"), [
    ({"schema-path": "s.json"}, "output-dir"),
    ({"output-dir": "o", "schema-path": "s.json", "bogus": 1}, "bogus"),
    ({"output-dir": "o", "schema-path": "s.json", "aggregator": "krum"}, "aggregator"),
])
def test_bad_run_config_is_refused(config, match) -> None:
    with pytest.raises(ConfigError, match=match):
        split_run_config(config)
