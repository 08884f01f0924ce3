"""A throw-away SoftHSM2 (a real PKCS#11 software HSM, Debian's softhsm2) for tests, the bench and trying the
`pkcs11:` signers locally: its own token directory and config file, tokens made with `softhsm2-util`.

SoftHSM reads SOFTHSM2_CONF when a process first loads the module, so a process uses one SoftHsm directory for its
lifetime; `env()` is what a worker subprocess needs to see the same tokens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from adapters.signers import DEFAULT_PKCS11_MODULE


class SoftHsmMissing(RuntimeError):
    """Raised when softhsm2 is not installed (`make setup` installs it)."""


class SoftHsm:
    """One SoftHSM2 token directory with a config file; `init_token` makes a token and writes its PIN file."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("softhsm2-util") is None or not Path(DEFAULT_PKCS11_MODULE).exists():
            raise SoftHsmMissing("softhsm2 is not installed (Debian: apt-get install softhsm2; `make setup` does)")
        self.dir = Path(directory)
        (self.dir / "tokens").mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.dir / 'tokens'}\nobjectstore.backend = file\n"
                             "log.level = ERROR\nslots.removable = false\n")
        self.module = DEFAULT_PKCS11_MODULE

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str, pin: str, so_pin: str) -> Path:
        """A new token `label` with this user PIN; the PIN file (mode 600) that pkcs11: references point at."""
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
                       env=os.environ | self.env(), check=True, capture_output=True, timeout=30)
        pin_file = self.dir / f"{label}.pin"
        fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pin + "\n")
        return pin_file

    def reference(self, token: str, label: str) -> str:
        return f"pkcs11:token={token};object={label}?pin-source={self.dir / (token + '.pin')}"
