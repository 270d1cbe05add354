#!/usr/bin/env python3
"""Verifies a pivtap session token with PyJWT against the server's JWKS, as a line-of-business backend would.

Usage: verify_token.py JWKS_FILE TOKEN_FILE AUDIENCE ISSUER

JWKS_FILE holds the server's /.well-known/jwks.json, TOKEN_FILE the token.
The key is chosen by the token's `kid`; only ES256 is accepted, and the
audience, issuer, expiry and the presence of exp, iat, iss, aud and sub are
checked. Prints the verified claims as JSON and exits 0, or prints why the
token is refused to standard error and exits 1 (2 for wrong usage).

Needs PyJWT with its crypto extra (Debian: python3-jwt python3-cryptography).
Used by tests/server_cli.rs.
"""

import json
import sys

import jwt


def verify(jwks_path, token, audience, issuer):
    """Returns the claims of `token` if it verifies, else raises jwt.PyJWTError."""
    with open(jwks_path, encoding="utf-8") as jwks_file:
        key_set = jwt.PyJWKSet.from_dict(json.load(jwks_file))
    kid = jwt.get_unverified_header(token).get("kid")
    keys = [key for key in key_set.keys if key.key_id == kid]
    if len(keys) != 1:
        raise jwt.InvalidKeyError(f"the JWKS has no single key with kid {kid!r}")
    return jwt.decode(
        token,
        keys[0].key,
        algorithms=["ES256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    jwks_path, token_path, audience, issuer = argv[1:]
    with open(token_path, encoding="utf-8") as token_file:
        token = token_file.read().strip()
    try:
        claims = verify(jwks_path, token, audience, issuer)
    except jwt.PyJWTError as error:
        print(f"refused: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
