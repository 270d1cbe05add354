"""A small relying party of pivtap's OpenID Connect provider, built on Authlib.

It is what an app developer would write: discovery, the authorization code flow with PKCE
S256 through Authlib's requests client (``OAuth2Session``), ID tokens validated as Authlib's
own OpenID clients validate them (joserfc with the provider's JWKS, then Authlib's
``CodeIDToken`` claims: iss, aud, nonce, exp, iat), and back-channel logout tokens validated
with the same JOSE library (iss, aud, sid, events, typ ``logout+jwt``, no nonce).

``RelyingParty`` serves a web app on 127.0.0.1 (the standard library's HTTP server, a thread):

- ``GET /``: the signed-in user, or a "Sign in with your badge" button;
- ``GET /login``: redirects to the provider's authorization endpoint (the kiosk's);
- ``GET /callback``: checks state and iss, redeems the code, validates the ID token, and
  starts a local session (a cookie);
- ``POST /backchannel-logout/<client id>``: validates a logout token for that client and
  ends the local sessions of its ``sid``.

No token is ever printed or logged: only claims, error codes and statuses.
"""

import html
import secrets
import threading
import time
import urllib.parse
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
HTTP_TIMEOUT = 10


class Provider:
    """The provider as discovery describes it, and its keys."""

    def __init__(self, issuer, ca_file):
        self.issuer = issuer
        self.ca_file = ca_file
        answer = requests.get(
            issuer + "/.well-known/openid-configuration",
            verify=ca_file,
            timeout=HTTP_TIMEOUT,
        )
        answer.raise_for_status()
        self.metadata = answer.json()
        self._keys = None

    def keys(self, force=False):
        """The JWKS, fetched once (and again on demand, for a key rotation)."""
        if self._keys is None or force:
            answer = requests.get(
                self.metadata["jwks_uri"], verify=self.ca_file, timeout=HTTP_TIMEOUT
            )
            answer.raise_for_status()
            self._keys = KeySet.import_key_set(answer.json())
        return self._keys

    def decode(self, token):
        """A JWT whose signature verifies with the JWKS, by the advertised algorithms."""
        registry = JWSRegistry(
            algorithms=self.metadata["id_token_signing_alg_values_supported"]
        )
        try:
            return jwt.decode(token, key=self.keys(), registry=registry)
        except JoseError:
            return jwt.decode(token, key=self.keys(force=True), registry=registry)

    def validate_id_token(self, id_token, client_id, nonce, access_token):
        """Authlib's validation of an ID token (as its OpenID clients' ``parse_id_token``)."""
        decoded = self.decode(id_token)
        params = {"client_id": client_id, "access_token": access_token}
        if nonce is not None:
            params["nonce"] = nonce
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            {"iss": {"values": [self.issuer]}},
            params,
        )
        claims.validate(leeway=30)
        return dict(claims), dict(decoded.header)

    def validate_logout_token(self, logout_token, client_id):
        """OpenID Connect Back-Channel Logout 1.0, section 2.6: the checks a relying party
        makes. Returns (claims, header); raises ``ValueError`` naming the failed check."""
        decoded = self.decode(logout_token)
        header = dict(decoded.header)
        if header.get("typ") != "logout+jwt":
            raise ValueError(f"typ is {header.get('typ')!r}, not logout+jwt")
        registry = jwt.JWTClaimsRegistry(
            leeway=30,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": client_id},
            iat={"essential": True},
            exp={"essential": True},
            sid={"essential": True},
            events={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except JoseError as error:
            raise ValueError(f"claims: {error.error}: {error.description}") from error
        claims = dict(decoded.claims)
        events = claims.get("events")
        if not isinstance(events, dict) or events.get(BACKCHANNEL_LOGOUT_EVENT) != {}:
            raise ValueError(f"events has no back-channel logout event: {events!r}")
        if "nonce" in claims:
            raise ValueError("a logout token must not carry a nonce")
        return claims, header


class Client:
    """One registered client: its id, secret (None: public) and redirect URI."""

    def __init__(self, provider, client_id, secret, redirect_uri, scope):
        self.provider = provider
        self.client_id = client_id
        self.secret = secret
        self.redirect_uri = redirect_uri
        self.scope = scope

    def session(self, auth="client_secret_basic", secret=None, **extra):
        """An Authlib ``OAuth2Session`` for this client, authenticated by `auth`
        (``client_secret_basic`` or ``client_secret_post``) with its secret or `secret`."""
        meta = self.provider.metadata
        session = OAuth2Session(
            client_id=self.client_id,
            client_secret=secret or self.secret,
            token_endpoint_auth_method=auth if self.secret else "none",
            revocation_endpoint_auth_method=auth if self.secret else "none",
            scope=self.scope,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint=meta["token_endpoint"],
            default_timeout=HTTP_TIMEOUT,
            **extra,
        )
        # The server's CA only: requests would let REQUESTS_CA_BUNDLE override `verify`.
        session.trust_env = False
        session.verify = self.provider.ca_file
        return session

    def authorization_url(self):
        """(url, state, code_verifier, nonce) of a new login."""
        verifier = generate_token(48)
        nonce = generate_token(20)
        url, state = self.session().create_authorization_url(
            self.provider.metadata["authorization_endpoint"],
            code_verifier=verifier,
            nonce=nonce,
        )
        return url, state, verifier, nonce


class RelyingParty:
    """The web app: local sessions by cookie, ended by back-channel logout."""

    def __init__(self, provider, port):
        self.provider = provider
        self.clients = {}
        self.web_client = None
        self.lock = threading.Lock()
        self.pending = {}  # state -> (client id, code verifier, nonce)
        self.sessions = {}  # cookie -> {"user": ..., "sid": ...}
        self.logouts = []  # what each back-channel logout delivery carried and came to
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def add_client(self, client, web=False):
        self.clients[client.client_id] = client
        if web:
            self.web_client = client

    def received_logouts(self):
        with self.lock:
            return list(self.logouts)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    # The web app's pages.

    def page(self, cookie):
        with self.lock:
            session = self.sessions.get(cookie)
        if session is None:
            body = (
                '<p id="status">Signed out</p>'
                '<form method="get" action="/login">'
                '<button id="login" type="submit">Sign in with your badge</button></form>'
            )
        else:
            user = session["user"]
            body = (
                '<p id="status">Signed in</p>'
                f'<p id="user">{html.escape(user.get("name", ""))} '
                f'({html.escape(user["sub"])})</p>'
            )
        return f"<!doctype html><title>Test app</title><h1>Test app</h1>{body}"

    def login(self):
        client = self.web_client
        url, state, verifier, nonce = client.authorization_url()
        with self.lock:
            self.pending[state] = (client.client_id, verifier, nonce)
        return url

    def callback(self, query):
        """The local session's cookie, or raises ``ValueError``."""
        params = dict(urllib.parse.parse_qsl(query))
        if "error" in params:
            raise ValueError(f"the provider answered {params['error']}")
        with self.lock:
            pending = self.pending.pop(params.get("state", ""), None)
        if pending is None:
            raise ValueError("unknown state")
        if params.get("iss", self.provider.issuer) != self.provider.issuer:
            raise ValueError("iss is not the provider's (RFC 9207)")
        client_id, verifier, nonce = pending
        client = self.clients[client_id]
        session = client.session()
        token = session.fetch_token(
            code=params["code"],
            code_verifier=verifier,
            grant_type="authorization_code",
        )
        claims, _header = self.provider.validate_id_token(
            token["id_token"], client_id, nonce, token["access_token"]
        )
        userinfo = session.get(self.provider.metadata["userinfo_endpoint"])
        userinfo.raise_for_status()
        user = userinfo.json()
        if user.get("sub") != claims["sub"]:
            raise ValueError("userinfo is of another subject")
        cookie = secrets.token_urlsafe(24)
        with self.lock:
            self.sessions[cookie] = {"user": user, "sid": claims["sid"]}
        return cookie

    def backchannel_logout(self, client_id, body):
        """(status, answer) for a logout token POSTed for `client_id`."""
        form = dict(urllib.parse.parse_qsl(body))
        record = {"client_id": client_id, "at": time.time()}
        try:
            if client_id not in self.clients:
                raise ValueError("not a client of this app")
            token = form.get("logout_token")
            if token is None:
                raise ValueError("no logout_token")
            claims, header = self.provider.validate_logout_token(token, client_id)
        except (ValueError, JoseError) as error:
            record["error"] = str(error)
            with self.lock:
                self.logouts.append(record)
            return 400, "invalid logout token"
        with self.lock:
            ended = [k for k, s in self.sessions.items() if s["sid"] == claims["sid"]]
            for cookie in ended:
                del self.sessions[cookie]
            record.update(claims=claims, header=header, ended_local_sessions=len(ended))
            self.logouts.append(record)
        return 200, ""

    def _handler(self):
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # noqa: A002 - no access log
                pass

            def cookie(self):
                jar = SimpleCookie(self.headers.get("Cookie", ""))
                morsel = jar.get("rp_session")
                return morsel.value if morsel else None

            def send(self, status, body, content_type="text/html; charset=utf-8", headers=()):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - the standard library's name
                path, _, query = self.path.partition("?")
                if path == "/":
                    self.send(200, app.page(self.cookie()))
                elif path == "/login":
                    self.send(302, "", headers=[("Location", app.login())])
                elif path == "/callback":
                    try:
                        cookie = app.callback(query)
                    except (ValueError, KeyError, OAuthError, JoseError) as error:
                        self.send(400, f'<p id="error">{html.escape(str(error))}</p>')
                        return
                    self.send(
                        302,
                        "",
                        headers=[
                            ("Location", "/"),
                            ("Set-Cookie", f"rp_session={cookie}; Path=/; HttpOnly"),
                        ],
                    )
                else:
                    self.send(404, "not found", "text/plain")

            def do_POST(self):  # noqa: N802
                prefix = "/backchannel-logout/"
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                if self.path.startswith(prefix):
                    status, answer = app.backchannel_logout(self.path[len(prefix):], body)
                    self.send(status, answer, "text/plain")
                else:
                    self.send(404, "not found", "text/plain")

        return Handler
