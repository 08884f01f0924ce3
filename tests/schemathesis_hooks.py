"""schemathesis hooks for the API fuzz (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): the OpenAPI document names
the `eip55-address` format; this strategy makes schema-valid values really valid (checksummed)."""

from hypothesis import strategies as st
from eth_utils import to_checksum_address
import schemathesis

schemathesis.openapi.format("eip55-address", st.binary(min_size=20, max_size=20).map(
    lambda raw: to_checksum_address("0x" + raw.hex())))
