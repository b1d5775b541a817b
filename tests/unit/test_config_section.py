"""``config.declare.section``: a configuration section is a frozen dataclass without
generated methods, and behaves as ``@dataclass(frozen=True)`` did."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from xsbackup import config
from xsbackup.config import AdmissionSettings, HttpSettings, RetentionSettings
from xsbackup.config.offsite import OffsiteSettings
from xsbackup.errors import ConfigError


def test_a_section_is_a_frozen_dataclass() -> None:
    a = AdmissionSettings()
    assert dataclasses.is_dataclass(a)
    assert [f.name for f in dataclasses.fields(a)][:2] == ["max_load", "max_blocks_pct"]
    assert a.slots == 10
    assert a.maintenance is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.slots = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del a.slots  # type: ignore[misc]
    assert dataclasses.asdict(a)["max_sessions_per_client"] == 3
    assert dataclasses.replace(a, slots=2).slots == 2


def test_equality_hash_repr_and_arguments() -> None:
    assert AdmissionSettings(slots=2) == AdmissionSettings(slots=2)
    assert AdmissionSettings(slots=2) != AdmissionSettings(slots=3)
    assert AdmissionSettings(1.5) == AdmissionSettings(max_load=1.5)  # positional
    assert hash(AdmissionSettings(slots=2)) == hash(AdmissionSettings(slots=2))
    assert repr(AdmissionSettings()).startswith("AdmissionSettings(max_load=8.0, ")
    assert AdmissionSettings() != RetentionSettings()
    with pytest.raises(TypeError, match="unexpected keyword argument 'slot'"):
        AdmissionSettings(slot=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values"):
        AdmissionSettings(1.5, max_load=2.0)  # type: ignore[misc]


def test_list_defaults_are_fresh_and_post_init_runs() -> None:
    one, two = HttpSettings(), HttpSettings()
    assert one.trusted_proxies == []
    assert one.trusted_proxies is not two.trusted_proxies
    with pytest.raises(ConfigError, match=r"offsite\.repository"):
        OffsiteSettings(repository="ftp://host/x")


def test_settings_load_builds_every_section(tmp_path: Path) -> None:
    settings = config.load(str(tmp_path), environ={})
    assert settings.admission == AdmissionSettings()
    assert settings.replace(admission__slots=4).admission.slots == 4
    assert settings.flat()["admission.slots"] == 10
