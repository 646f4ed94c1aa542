"""Verification of bearer tokens as the Polars Cloud API would do it: the signature
against the identity provider's JWKS (RS256, by `kid`), and `exp` in the future.

Used by the stand-in API so that "the call succeeded" means the client sent a token the
identity provider really issued and that was still valid, not merely a bearer.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class Verifier:
    """Checks JWTs against the keys at `jwks_url` (fetched again for an unknown `kid`)."""

    def __init__(self, jwks_url: str) -> None:
        self.jwks_url = jwks_url
        self.keys: dict[str, rsa.RSAPublicKey] = {}

    def _load(self) -> None:
        with urllib.request.urlopen(self.jwks_url, timeout=10) as r:  # loopback only
            doc = json.load(r)
        for k in doc.get("keys", []):
            if k.get("kty") == "RSA" and "kid" in k:
                n = int.from_bytes(_b64(k["n"]), "big")
                e = int.from_bytes(_b64(k["e"]), "big")
                self.keys[k["kid"]] = rsa.RSAPublicNumbers(e, n).public_key()

    def __call__(self, token: str) -> str | None:
        """None when the token is acceptable, else why not."""
        try:
            head, payload, sig = token.split(".")
            header: dict[str, Any] = json.loads(_b64(head))
            claims: dict[str, Any] = json.loads(_b64(payload))
        except ValueError:
            return "not a JWT"
        if header.get("alg") != "RS256":
            return f"alg {header.get('alg')!r} is not RS256"
        kid = header.get("kid")
        if kid not in self.keys:
            self._load()
        key = self.keys.get(kid)
        if key is None:
            return f"unknown kid {kid!r}"
        try:
            key.verify(_b64(sig), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001 - InvalidSignature and malformed keys alike
            return "bad signature"
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= time.time():
            return "expired"
        return None
