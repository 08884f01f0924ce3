"""What the log processor hides: secret-bearing keys, and in every string (an event's values and a logged
exception's traceback alike) a URL's credentials: user-info, path and query. Node providers put API keys in the
path (https://mainnet.infura.io/v3/<key>, https://<name>.quiknode.pro/<token>/) or the query (?apikey=...)."""

from __future__ import annotations

import io
import json

from relayer.logging import configure, get_logger

KEY = "a3f5c0ffee1234567890deadbeef4242"


def _logged(emit) -> dict:
    out = io.StringIO()
    configure("DEBUG", stream=out)
    try:
        emit(get_logger(component="test"))
    finally:
        configure("INFO")
    return json.loads(out.getvalue().splitlines()[-1])


def test_a_node_url_keeps_its_host_and_loses_the_key_in_its_path_query_and_user_info():
    line = _logged(lambda log: log.warning(
        "rpc_endpoint_slow", left=f"https://mainnet.infura.io/v3/{KEY}",
        now_using=f"https://node.example.com:8545/rpc?apikey={KEY}", other=f"wss://user:{KEY}@ws.example.com/",
        message=f"failed on http://10.0.0.5:8545/{KEY}/ after 2 s"))
    text = json.dumps(line)
    assert KEY not in text, text
    assert line["left"].startswith("https://mainnet.infura.io") and line["now_using"].startswith(
        "https://node.example.com:8545") and "ws.example.com" in line["other"] and "10.0.0.5:8545" in line["message"]


def test_a_logged_exception_that_names_the_url_does_not_carry_the_key():
    def emit(log) -> None:
        try:
            raise ConnectionError(f"401 Client Error: Unauthorized for url: https://eth.example.org/v2/{KEY}")
        except ConnectionError:
            log.exception("rpc_failed", chain="st")

    line = _logged(emit)
    assert KEY not in json.dumps(line) and "eth.example.org" in line["exception"]


def test_plain_values_and_bare_hosts_are_left_as_they_are():
    line = _logged(lambda log: log.info("chain_reread", chain="sc", from_block=12,
                                        now_using="http://127.0.0.1:8546", note="see https://docs.example.com/."))
    assert line["now_using"] == "http://127.0.0.1:8546" and line["note"] == "see https://docs.example.com/."
    assert line["from_block"] == 12


def test_passwords_with_at_signs_or_quotes_unix_sockets_and_values_that_are_not_strings_are_redacted():
    class Settings:  # logged as an object: JSON renders its repr
        def __repr__(self) -> str:
            return f"Settings(redis_url='redis://:{KEY}@cache:6379/0')"

    line = _logged(lambda log: log.warning(
        "odd", a=f"redis://:p@{KEY}@cache:6379/0", b=f"redis://:pa'{KEY}@cache:6379",
        c=f"unix:///run/r.sock?password={KEY}",
        d=f"unix://:{KEY}@/run/redis.sock", e={"urls": [f"https://h.example/v3/{KEY}"]}, f=Settings(),
        g=f"(https://x.io/v3/{KEY}), then"))
    text = json.dumps(line)
    assert KEY not in text and "p@" not in line["a"], text
    assert line["a"].startswith("redis://[redacted]@cache:6379/") and line["g"].endswith("), then")


def test_two_endpoints_on_one_host_stay_apart():
    line = _logged(lambda log: log.warning("rpc_endpoint_slow", left=f"https://mainnet.infura.io/v3/{KEY}",
                                           now_using="https://mainnet.infura.io/v3/" + "7" * 32))
    assert line["left"] != line["now_using"] and KEY not in json.dumps(line)
