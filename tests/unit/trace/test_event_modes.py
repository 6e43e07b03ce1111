"""The config's event_mode key takes exactly the modes the trace client knows."""

from __future__ import annotations

from nri_optimizer import config
from nri_optimizer.trace import client


def test_the_config_takes_exactly_the_event_modes_the_trace_client_knows() -> None:
    assert config.EVENT_MODES == client.EVENT_MODES == ("auto", "fid", "fd")
