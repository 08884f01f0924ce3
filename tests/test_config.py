"""Configuration: .env.example documents every setting; secrets never print."""

from __future__ import annotations

import re
from pathlib import Path

from relayer.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_documents_every_setting_and_nothing_else():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(DVP_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    fields = {f"DVP_{name.upper()}" for name in Settings.model_fields}
    assert fields - documented == set(), f"undocumented: {sorted(fields - documented)}"
    extra = documented - fields - {"DVP_DEPLOYER_KEY", "DVP_ENV_FILE"}
    assert extra == set(), f"documented but unknown: {sorted(extra)}"


def test_secrets_do_not_print():
    from relayer.secrets import generate_key

    key, box_key = "0x" + "ab" * 32, generate_key()
    s = Settings(_env_file=None, party_keys=key, secret_key=box_key, api_tokens="tok-123")
    shown = repr(s) + str(s) + str(s.model_dump())
    assert "ab" * 32 not in shown and box_key not in shown and "tok-123" not in shown


async def test_a_wrong_chain_behind_the_rpc_url_is_refused(net):
    import pytest

    from relayer.errors import ConfigError

    engine = await _engine_with(net, st_chain_id=net.doc["st"]["chain_id"] + 1)
    with pytest.raises(ConfigError, match="serves chain"):
        await engine.start()
    from relayer.service import close_engine

    await close_engine(engine)


async def _engine_with(net, **over):
    from relayer.service import build_engine

    return build_engine(net.settings([net.seller], **over))
